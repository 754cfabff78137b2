"""WinDivert backend: enforce a Plan with pydivert handles (Windows; Linux through eBPFDivert).

Handles of one generation (one applied plan), filters from filter.py:
- base    NETWORK layer, Flag.DROP: anything but IPv4, IPv4 fragments (Windows), and DHCP-port
          packets that are not DHCP to a peer the plan lets them reach.
- dropN   NETWORK layer, Flag.DROP, one per address range: drops a packet whose remote
          address is in its range unless a flow there allows it. A packet must pass every
          handle, so together they allow what the plan allows; each filter stays under
          WinDivert's 256 objects, and every TCP decision stays in the kernel.
- forward NETWORK_FORWARD layer, Flag.DROP, filter "true": nothing is routed through the host.
- guardN  NETWORK layer, diverting handle per range, only where exception UDP out flows are
          (a stateless filter cannot tell their replies from unsolicited datagrams) or for
          the exceptions of a plan too big to split (coarse shape): the packets come to
          Python, FlowDecider (decider.py) judges them, allowed ones are re-injected. No
          guard's filter matches loopback, vendor, DNS or DHCP traffic.

Crash semantics: handles belong to the process that opened them. When it dies, Windows
removes their filters at once and eBPFDivert lets traffic through after its 3 s heartbeat.
So the agent (role "agent", with a state dir) hands every plan to a guardian process that
holds its own generation of the same handles (guardian.py): either process alone still
enforces the plan, and each restarts the other. Both killed: isolation ends.

Read-back: on Linux, eBPFDivert enforces every handle through its TC programs on each
device (kernel.py). read_back() reads them from the kernel: a deleted clsact qdisc or
filter, or a device without them, gives digest None, so the engine logs tamper_detected
and re-applies (a new generation of handles re-attaches the programs). The filters inside
the programs are not readable; Windows offers no read-back at all.

Atomic switch A -> B: B's handles are opened before A's are closed. While both are open a
packet must pass both: allowed is A and B, never more than A or B alone.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

from platforms.plan import Plan
from platforms.base import Backend, BackendError, BackendUnavailable, Capabilities, ReadBack, Support
from platforms.windivert import kernel
from platforms.windivert.decider import FlowDecider
from platforms.windivert.filter import (EPHEMERAL_DEFAULT, LIMITS, MAX_PARTITIONS, Filters, compile_plan,
                                        count_objects, render)

NOTES = ("filters live in handles of the agent and of its guardian process, each holding the "
         "whole plan: isolation lasts while either runs (Windows drops a process's handles at "
         "exit; eBPFDivert after a 3 s heartbeat), and each restarts the other. "
         "Stateless filters: UDP replies of exception flows are checked in user space; "
         "UDP replies of vendor/DNS flows are matched on source port in the kernel.")

# pydivert's eBPF backend (Linux, the lab's stand-in for WinDivert): seen here.
EBPF_LIMITS = ("eBPFDivert (Linux): IPv4 fragments and IPv6 packets with a fragment header pass "
               "every handle whatever its filter (WinDivert on Windows judges each fragment), so the "
               "filters do not test for fragments there",
               "eBPFDivert (Linux): its kernel rules decide exactly only what its lowering of a filter "
               "keeps exact (the vendor's flows, first in their handle); other packets of a handle's "
               "address range are judged against the whole filter by eBPFDivert's C library in this "
               "process, not in Python")
# eBPFDivert passes fragments whatever the filter, and a fragment test there makes it judge
# every packet of the handle in user space: so only WinDivert (Windows) gets one.
FRAGMENTS = not sys.platform.startswith("linux")
HANDLES_MAX = 2 * MAX_PARTITIONS + 2   # base, ranges, forward, guards: 2 * 35 < the 100 between roles
GUARDIAN_WAIT_S = 5.0      # apply/clear wait this long for the guardian to follow
@dataclass
class _Handle:
    role: str
    handle: object
    layer: str
    priority: int
    objects: int


@dataclass
class _Generation:
    plan: Plan
    filters: Filters
    ephemeral: tuple[int, int]
    slot: int
    decider: FlowDecider
    handles: list[_Handle] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class WinDivertBackend(Backend):
    name = "windivert"
    CAPABILITIES = Capabilities(survives_agent_exit=True, blocks_tamper_while_alive=False,
                                atomic_apply=True, cuts_open_connections=True, notes=NOTES)
    # Two priority slots per role so that old and new generations, and the agent's and the
    # guardian's, never share a priority. A guard runs before the drop handles (higher
    # priority = earlier).
    # A generation's handles count down from these, two apart (at most HANDLES_MAX of them).
    PRIORITIES = {"agent": {"drop": (1000, 1001), "guard": (2000, 2001)},
                  "guardian": {"drop": (900, 901), "guard": (1900, 1901)}}

    def __init__(self, state_dir: str | None = None, role: str = "agent") -> None:
        """`role` "agent" with a `state_dir`: every plan is also held by a guardian process
        (no state dir: this process alone, as in `cordon rules` and unit labs). "guardian":
        the guardian's own handles."""
        super().__init__(state_dir)
        self._gen: _Generation | None = None
        self._lock = threading.Lock()
        self._prio = self.PRIORITIES[role]
        self.guardian = None
        if state_dir and role == "agent":
            # Imported here: `python -m platforms.windivert.guardian` must not find its own
            # module already loaded through this package's __init__ (runpy warns, twice loaded).
            from platforms.windivert.guardian import GuardianLink
            self.guardian = GuardianLink(state_dir)

    @classmethod
    def is_supported(cls) -> Support:
        if not sys.platform.startswith(("win", "linux")):
            return Support(False, f"WinDivert runs on Windows (eBPFDivert on Linux), not {sys.platform}")
        try:
            _pydivert()  # pydivert imports and the driver (or eBPFDivert library) is registered
        except BackendUnavailable as exc:
            return Support(False, str(exc))
        return Support(True, "pydivert loaded and the WinDivert driver is registered")

    def render(self, plan: Plan) -> str:
        try:  # host exceptions first: their names and current addresses
            return "".join(f"# {line}\n" for line in plan.host_lines()) + \
                render(plan, kernel.ephemeral_ports(EPHEMERAL_DEFAULT), limits(), FRAGMENTS)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc

    # -- apply / clear ------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        ephemeral = kernel.ephemeral_ports(EPHEMERAL_DEFAULT)
        try:
            filters = compile_plan(plan, ephemeral=ephemeral, fragments=FRAGMENTS)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        pydivert = _pydivert()
        with self._lock:
            old = self._gen
            slot = 0 if old is None else 1 - old.slot
            gen = _Generation(plan, filters, ephemeral, slot, FlowDecider(plan.flows, ephemeral=ephemeral))
            if old is not None:
                gen.decider.adopt(old.decider)
            try:
                self._open(gen, pydivert)
            except Exception as exc:
                self._close(gen)
                raise BackendError(f"windivert: opening handles failed, previous state kept: {exc}") from exc
            self._gen = gen
            if old is not None:
                self._close(old)  # only now: never a moment without a DROP handle
            if self.guardian is not None:
                # Until it follows, the guardian's old plan and ours are both in force: never
                # more than either. One that does not follow reads back as not enforcing, so
                # the engine's reconcile re-applies and starts another.
                self.guardian.hand_over(plan)
                self.guardian.ensure()
                self.guardian.wait_holding(plan.digest(), GUARDIAN_WAIT_S)

    def _open(self, gen: _Generation, pydivert) -> None:
        # Open order: the guards, then the DROP handles; each only takes more away until the
        # last is in. Every handle has a priority of its own, two apart so the other slot's
        # fit between: eBPFDivert mixes up handles that share one (seen here: 9 DROP handles
        # at one priority let every packet through).
        if len(gen.filters.handles()) > HANDLES_MAX:
            raise BackendError(f"windivert: {len(gen.filters.handles())} handles, at most {HANDLES_MAX}")
        for name, text in sorted(gen.filters.handles(), key=lambda h: not h[0].startswith("guard")):
            guard = name.startswith("guard")
            layer = pydivert.Layer.NETWORK_FORWARD if name == "forward" else pydivert.Layer.NETWORK
            self._add(gen, pydivert, name, text, layer, pydivert.Flag.DEFAULT if guard else pydivert.Flag.DROP,
                      self._prio["guard" if guard else "drop"][gen.slot] - 2 * len(gen.handles))

    def _add(self, gen, pydivert, role, text, layer, flags, priority) -> None:
        h = pydivert.Divert(text, layer=layer, priority=priority, flags=flags)
        h.open()
        gen.handles.append(_Handle(role, h, layer.name, priority, count_objects(text)))
        if role.startswith("guard"):
            target = self._guard_loop
        elif sys.platform.startswith("linux"):
            # eBPFDivert lowers a filter to at most 64 kernel rules per family; what it
            # cannot lower exactly it captures and judges in its C library, which runs only
            # while someone waits in recv(). recv() on a DROP handle never returns packets.
            target = self._pump_loop
        else:
            return  # Windows: the driver drops in the kernel, nothing to drive
        t = threading.Thread(target=target, args=(h, gen), name=f"windivert-{role}", daemon=True)
        t.start()
        gen.threads.append(t)

    @staticmethod
    def _pump_loop(h, gen: _Generation) -> None:
        while not gen.stop.is_set():
            try:
                h.recv(timeout=0.25)
            except TimeoutError:
                continue
            except (OSError, RuntimeError):
                return

    @staticmethod
    def _guard_loop(h, gen: _Generation) -> None:
        while not gen.stop.is_set():
            try:
                p = h.recv(timeout=0.25)
            except TimeoutError:
                continue
            except (OSError, RuntimeError):
                return
            try:
                if gen.decider.decide_packet(p):
                    h.send(p)
            except (OSError, RuntimeError, ValueError):
                continue  # a packet we cannot judge or re-inject is dropped (fail closed)

    @staticmethod
    def _close(gen: _Generation) -> None:
        gen.stop.set()
        # Close the DROP handles before the guards: while a guard is still there nothing it
        # holds back leaks.
        for h in sorted(gen.handles, key=lambda h: h.role.startswith("guard")):
            try:
                h.handle.close()
            except Exception:  # noqa: BLE001 - closing must go on for the others
                pass
        for t in gen.threads:
            t.join(timeout=2)

    def clear(self) -> None:
        with self._lock:
            if self.guardian is not None:
                self.guardian.withdraw()  # the guardian closes its handles and exits
                self.guardian.wait_holding(None, GUARDIAN_WAIT_S)
            gen, self._gen = self._gen, None
            if gen is not None:
                self._close(gen)

    def close(self) -> None:
        """This process's handles only (what its exit would do): the guardian, if any, goes
        on enforcing the plan until a restarted agent adopts it or a release withdraws it."""
        with self._lock:
            gen, self._gen = self._gen, None
            if gen is not None:
                self._close(gen)

    # -- read back -------------------------------------------------------------------

    def read_back(self) -> ReadBack:
        seen = kernel.attachments()  # outside the lock: a netlink dump, nothing of ours
        missing = kernel.missing(seen) if seen is not None else []
        ephemeral = kernel.ephemeral_ports(EPHEMERAL_DEFAULT)
        held = self.guardian.status() if self.guardian is not None else None
        guardian = None if self.guardian is None else (
            {"running": False} if held is None else {"running": True, "pid": held.get("pid"),
                                                     "digest": held.get("digest")})
        with self._lock:
            gen = self._gen
            base = {"kernel_read_back": seen is not None, "attachments": seen, "missing_attachments": missing,
                    "guardian": guardian, "tamper": "detect-and-repair", "limits": list(limits())}
            if gen is None:
                # Not ours (a restarted agent before it applies, `cordon status` while the
                # agent is down): the guardian's handles are what is in force, if any.
                digest = held.get("digest") if held is not None and not missing else None
                return ReadBack(held is not None, digest, {"handles": [], **base})
            handles = []
            for h in gen.handles:
                entry = {"role": h.role, "layer": h.layer, "priority": h.priority,
                         "filter_objects": h.objects, "open": bool(h.handle.is_open)}
                try:
                    entry["stats"] = {k: v for k, v in h.handle.stats().items()
                                      if k in ("diverted", "dropped")}
                except Exception:  # noqa: BLE001 - stats are informative only
                    pass
                handles.append(entry)
            alive = all(e["open"] for e in handles) and all(t.is_alive() for t in gen.threads)
            # With a guardian, the plan is in force only if it holds it too: a guardian that
            # died or lags reads as not enforcing, and the engine's re-apply restarts it.
            partner = self.guardian is None or (held is not None and held.get("digest") == gen.plan.digest())
            # The host's connections now come from another range than the filters let
            # replies in to: out of date, so the engine's re-apply compiles it again.
            same_ports = gen.ephemeral == ephemeral
            enforcing = alive and not missing and partner and same_ports
            details = {
                **base,
                "shape": gen.filters.shape,
                "ephemeral_ports": {"filters": list(gen.ephemeral), "host": list(ephemeral)},
                "handles": handles,
                "depends_on_process": self.guardian is None,
                "note": "the eBPF programs are read from the kernel (Linux); the filters inside "
                        "them are the ones this process's handles (and the guardian's) were "
                        "opened with, and they vanish when the processes exit",
            }
            return ReadBack(alive or held is not None, gen.plan.digest() if enforcing else None, details)


def limits() -> tuple[str, ...]:
    """The paths this backend leaves open, for `status` (backend.limits) and `cordon rules`."""
    return LIMITS + (EBPF_LIMITS if sys.platform.startswith("linux") else ())


def _pydivert():
    try:
        import pydivert
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'windivert' needs pydivert: {exc}") from exc
    if not pydivert.Divert.is_registered():
        raise BackendUnavailable("backend 'windivert': the WinDivert driver / eBPFDivert library is missing")
    return pydivert
