"""WinDivert backend: enforce a Plan with pydivert handles (Windows; Linux through eBPFDivert).

Handles of one generation (one applied plan):
- drop    NETWORK layer, Flag.DROP: the kernel drops everything the plan does not allow.
- forward NETWORK_FORWARD layer, Flag.DROP, filter "true": nothing is routed through the host.
- guard   NETWORK layer, diverting handle, only when the plan has exception packets that a
          stateless filter cannot judge (UDP replies) or that do not fit the filter size
          (coarse shape): the packets come to Python, FlowDecider judges them against the
          plan, allowed ones are re-injected. Its filter never matches loopback, vendor,
          DNS or DHCP traffic (see filter.py), so those never depend on Python.

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

import ipaddress
import sys
import threading
import time
from dataclasses import dataclass, field

from platforms.plan import Flow, Plan
from platforms.base import Backend, BackendError, BackendUnavailable, Capabilities, ReadBack, Support
from platforms.windivert import kernel
from platforms.windivert.filter import (EPHEMERAL_DEFAULT, ICMP_REPLY_TYPES, LIMITS, PEER_PORTS_FROM, Filters,
                                        compile_plan, render)

NOTES = ("filters live in handles of the agent and of its guardian process, each holding the "
         "whole plan: isolation lasts while either runs (Windows drops a process's handles at "
         "exit; eBPFDivert after a 3 s heartbeat), and each restarts the other. "
         "Stateless filters: UDP replies of exception flows are checked in user space; "
         "UDP replies of vendor/DNS flows are matched on source port in the kernel.")

# pydivert's eBPF backend (Linux, the lab's stand-in for WinDivert): seen here.
EBPF_LIMITS = ("eBPFDivert (Linux): IPv4 fragments and IPv6 packets with a fragment header pass "
               "every handle whatever its filter (WinDivert on Windows judges each fragment)",)
GUARDIAN_WAIT_S = 5.0      # apply/clear wait this long for the guardian to follow
UDP_TIMEOUT = 120.0        # s, like conntrack's assured UDP timeout
UDP_TABLE_MAX = 65536      # learned UDP flows; new ones are refused when full (fail closed)
_PROTO_NAME = {6: "tcp", 17: "udp", 1: "icmp"}


class FlowDecider:
    """The plan's exception semantics for one packet, with the UDP flows the host opened.

    Keys of the UDP table are (local port, peer address, peer port) of datagrams the host
    sent under an out flow; a datagram from the peer is a reply only if it matches one.
    """

    def __init__(self, flows: tuple[Flow, ...], clock=time.monotonic,
                 ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT) -> None:
        self._ephemeral = ephemeral
        self._exact: dict[int, list[Flow]] = {}
        self._nets: list[tuple[int, int, Flow]] = []
        for f in flows:
            if f.origin != "exception":
                continue
            net = f.ip_network
            if net.num_addresses == 1:
                self._exact.setdefault(int(net.network_address), []).append(f)
            else:
                self._nets.append((int(net.network_address), int(net.broadcast_address), f))
        self._udp: dict[tuple[int, int, int], float] = {}
        self._clock = clock

    def _flows_for(self, addr: int) -> list[Flow]:
        return self._exact.get(addr, []) + [f for lo, hi, f in self._nets if lo <= addr <= hi]

    def decide(self, outbound: bool, proto: int, src: str, dst: str, sport: int | None, dport: int | None,
               syn: bool = False, ack: bool = False, icmp_type: int | None = None) -> bool:
        remote = int(ipaddress.IPv4Address(dst if outbound else src))
        name = _PROTO_NAME.get(proto, "other")
        for flow in self._flows_for(remote):
            if flow.protocol not in ("any", name):
                continue
            if self._allows(flow, outbound, name, remote, sport, dport, syn, ack, icmp_type):
                return True
        return False

    def _allows(self, flow, outbound, name, remote, sport, dport, syn, ack, icmp_type) -> bool:
        opener = outbound == (flow.direction == "out")  # packet goes in the flow's original direction
        if name == "other":
            return outbound or flow.direction == "in"
        if name == "icmp":
            return opener or icmp_type in ICMP_REPLY_TYPES
        new_tcp = name == "tcp" and syn and not ack

        def ports_ok(p):
            return not flow.ports or any(r.first <= p <= r.last for r in flow.ports)

        if flow.direction == "out":
            if outbound:
                if ports_ok(dport) and name == "udp":
                    self._learn((sport, remote, dport))
                return ports_ok(dport)
            if not ports_ok(sport) or new_tcp:
                return False
            if name == "tcp":   # no state in the kernel either: the filter's rule (LIMITS)
                return self._ephemeral[0] <= dport <= self._ephemeral[1]
            return self._known((dport, remote, sport))
        if not outbound:
            return ports_ok(dport)
        return ports_ok(sport) and not new_tcp and (name != "tcp" or dport >= PEER_PORTS_FROM)

    def _learn(self, key) -> None:
        if key not in self._udp and len(self._udp) >= UDP_TABLE_MAX:
            self._expire()
            if len(self._udp) >= UDP_TABLE_MAX:
                return
        self._udp[key] = self._clock() + UDP_TIMEOUT

    def _known(self, key) -> bool:
        until = self._udp.get(key)
        if until is None or until < self._clock():
            return False
        self._udp[key] = self._clock() + UDP_TIMEOUT
        return True

    def _expire(self) -> None:
        now = self._clock()
        for k in [k for k, t in self._udp.items() if t < now]:
            del self._udp[k]

    def adopt(self, other: "FlowDecider") -> None:
        """Keep the UDP flows learned under the previous plan that this plan still allows."""
        for (lport, remote, rport), until in list(other._udp.items()):
            if any(f.direction == "out" and f.protocol in ("udp", "any")
                   and (not f.ports or any(r.first <= rport <= r.last for r in f.ports))
                   for f in self._flows_for(remote)):
                self._udp[(lport, remote, rport)] = until

    def decide_packet(self, p) -> bool:
        if p.ipv4 is None or p.ipv4.mf or p.ipv4.frag_offset:
            return False    # fragments: never judged (filter.py drops them too)
        proto = p.protocol[0]
        tcp = p.tcp
        icmp = p.icmpv4
        return self.decide(p.is_outbound, proto, p.src_addr, p.dst_addr, p.src_port, p.dst_port,
                           syn=bool(tcp and tcp.syn), ack=bool(tcp and tcp.ack),
                           icmp_type=icmp.type if icmp else None)


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
                render(plan, kernel.ephemeral_ports(EPHEMERAL_DEFAULT), limits())
        except ValueError as exc:
            raise BackendError(str(exc)) from exc

    # -- apply / clear ------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        ephemeral = kernel.ephemeral_ports(EPHEMERAL_DEFAULT)
        try:
            filters = compile_plan(plan, ephemeral=ephemeral)
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
        f = gen.filters
        objs = f.objects()
        # Open order: guard, forward, drop. Each only takes more away until the last is in.
        if f.guard:
            self._add(gen, pydivert, "guard", f.guard, pydivert.Layer.NETWORK, pydivert.Flag.DEFAULT,
                      self._prio["guard"][gen.slot], objs["guard"])
        self._add(gen, pydivert, "forward", f.forward, pydivert.Layer.NETWORK_FORWARD, pydivert.Flag.DROP,
                  self._prio["drop"][gen.slot], objs.get("forward", 0))
        self._add(gen, pydivert, "drop", f.drop, pydivert.Layer.NETWORK, pydivert.Flag.DROP,
                  self._prio["drop"][gen.slot], objs["drop"])

    def _add(self, gen, pydivert, role, text, layer, flags, priority, objects) -> None:
        h = pydivert.Divert(text, layer=layer, priority=priority, flags=flags)
        h.open()
        gen.handles.append(_Handle(role, h, layer.name, priority, objects))
        if role == "guard":
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
        # Close drop before guard: while the guard is still there nothing it holds back leaks.
        for h in sorted(gen.handles, key=lambda h: h.role != "drop"):
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
