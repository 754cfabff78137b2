"""Linux backend: one nftables table `inet cordon`, applied through netlink in one batch.

The table carries flags owner|persist where the kernel has them: while this backend's
netlink socket is open no other process can delete or flush it, and when the process
dies the table stays (fail closed). A restarted agent adopts an orphaned table by
setting the owner flag again in the batch that re-applies its plan.
"""
from __future__ import annotations

import select
import time

from platforms.plan import Plan, atoms_digest
from platforms.base import Backend, BackendError, Capabilities, ReadBack, Support
from platforms.nftables import probe as probes
from platforms.nftables import wire as w
from platforms.nftables.netlink import NftSocket
from platforms.nftables import readback
from platforms.nftables import netdev
from platforms.nftables.devices import LinkWatcher, list_devices
from platforms.nftables.render import atoms_from_elements, build, chain_rules, render_text
from platforms.nftables.shape import HOT_SETS, SET_FIELDS, SET_NAMES, TABLE, set_name

WANTED_FLAGS = w.WANTED_TABLE_FLAGS
REFRESH_TRIES = 3     # looks at the kernel's elements before a refresh falls back to apply()
LAPSE_WINDOW_S = 1.0  # an own element this close to its expiry may be in one dump and not the next
REPAIR_WINDOW = ("tamper: this kernel has no table persist flag (Linux < 6.9), so the table has no owner: "
                 "root can flush the ruleset, and the host is open from then until the agent has "
                 "restored it (DESIGN: within 1 s, logged as tamper_detected)")
NOTES = ("table flags owner|persist where the start-up probe finds persist (Linux >= 6.9); "
         "without it the table has no owner and tamper is only detected (read_back / "
         "wait_for_change)")


class NftablesBackend(Backend):
    name = "nftables"
    CAPABILITIES = Capabilities(survives_agent_exit=True, blocks_tamper_while_alive=True,
                                atomic_apply=True, cuts_open_connections=True,
                                change_events=True, notes=NOTES)

    def __init__(self, state_dir: str | None = None, netns: str | None = None) -> None:
        """`netns`: name of a network namespace (as in `ip netns`) to work in instead of
        the caller's own; the netlink socket is opened there once and kept."""
        super().__init__(state_dir)
        self.netns = netns
        self._sock: NftSocket | None = None
        self._events: NftSocket | None = None
        self._links: LinkWatcher | None = None
        self._plan: Plan | None = None
        self._ruleset = None   # build(self._plan), with the expiries its elements were given
        self._table_flags: int | None = None  # from the persist probe, at the first apply

    @classmethod
    def is_supported(cls) -> Support:
        return probes.is_supported()

    # --- interface ---------------------------------------------------------------------

    def render(self, plan: Plan) -> str:
        rs = build(plan)
        hosts = "".join(f"# {line}\n" for line in plan.host_lines())
        return hosts + render_text(rs) + netdev.render_text(rs, list_devices(self.netns))

    def apply(self, plan: Plan) -> None:
        """A first isolation is one batch that creates the table. An update is one batch
        that swaps the rules over to sets of the other generation, loaded (unused, so
        enforcing nothing) by a batch just before: the kernel makes a new interval
        set's elements visible only after the rules of its commit are live, so sets
        created in the swapping batch itself would leave a moment with empty sets."""
        ruleset = build(plan)
        sock = self._socket()
        state = readback.table_state(sock)
        if state.present and state.owner not in (None, sock.portid):
            raise BackendError(f"nftables table inet {TABLE} is held by another process "
                               f"(netlink port {state.owner}); nothing was changed")
        if state.present and not state.shape_problems and \
                state.flags & w.TABLE_F_PERSIST == self._flags() & w.TABLE_F_PERSIST:
            self._update(sock, ruleset, state.gen)
        else:
            self._create(sock, ruleset, state)
        self._plan, self._ruleset = plan, ruleset

    def refresh(self, plan: Plan) -> None:
        """Host addresses and expiries changed (DESIGN §11): one batch of set element
        changes in the sets in force, inet and netdev alike; no chain or rule is touched.
        An element whose expiry moved is deleted and added again with its new timeout in
        the same batch. What to delete is read from the kernel first, per table: an
        element can lapse by its own timeout at any moment, in either copy (deleting it
        then fails the batch with ENOENT), so a refused batch is computed again from a new
        look, REFRESH_TRIES times. Anything else (no table of ours, the batch refused
        each time) falls back to apply()."""
        old, sock = self._ruleset, self._socket()
        state = readback.table_state(sock)
        new = build(plan)
        if (old is None or (new.dhcp, new.dhcp_servers) != (old.dhcp, old.dhcp_servers) or not state.present or state.shape_problems
                or state.owner not in (None, sock.portid)):
            return self.apply(plan)
        families = [w.NFPROTO_INET] + ([netdev.NFPROTO_NETDEV] if self._netdev_present(sock) else [])
        def held(family: int):  # what that table holds of a set now
            return lambda name: set(readback.set_elements(sock, name, state.gen, family))
        for _ in range(REFRESH_TRIES):
            msgs = [m for f in families for m in self._element_diff_msgs(old, new, state.gen, f, held(f))]
            if not msgs:
                break
            try:
                sock.batch(msgs)
                break
            except BackendError:
                continue  # most likely an element lapsed since the look: look again
        else:
            return self.apply(plan)
        self._plan, self._ruleset = plan, new

    @staticmethod
    def _element_diff_msgs(old, new, gen: str, family: int, held) -> list:
        """The batch part for one table: deletes of the elements that went or whose expiry
        moved, of those it still holds (`held(set name)`: the elements read from it), then
        adds of the new and the moved, then its hot sets emptied (no key stays hot that the
        new elements do not hold); none if nothing changed. A moved element is deleted and
        added again, not updated in place: on this 6.18 kernel a NEWSETELEM on an existing
        element of the real sets left it to lapse at its old expiration (test_host_exceptions
        caught it)."""
        dels, adds = [], []
        for name in SET_FIELDS:
            before, after = set(old.elements.get(name, ())), set(new.elements.get(name, ()))
            old_t, new_t = old.expires.get(name, {}), new.expires.get(name, {})
            moved = {el for el in before & after if old_t.get(el) != new_t.get(el)}
            changed = (before - after) | moved
            gone = sorted(changed & held(name)) if changed else []
            came = sorted((after - before) | moved)
            dels += [("DELSETELEM", 0, body, family) for body in w.setelem_bodies(name, gone, gen)] if gone else []
            adds += [("NEWSETELEM", w.NLM_F_CREATE, body, family)
                     for body in w.setelem_bodies(name, came, gen, new.timeouts_ms(name))] if came else []
        if not (dels or adds):
            return []
        return dels + adds + [("DELSETELEM", 0, w.set_ref_body(n, gen), family) for n in HOT_SETS]

    def _create(self, sock: NftSocket, rs, state) -> None:
        """A table that is not the shape Cordon installs is replaced in one batch. A first
        isolation takes two, like an update: the tables with their sets and elements
        (no hooks, so enforcing nothing), then the chains and rules that use them; a set
        created in the batch that hooks the chains would be empty for a moment and drop
        vendor packets. If the second batch fails, the first is removed."""
        if state.present or self._netdev_present(sock):
            sock.batch(self._create_batch(rs, state, self._flags(), sock))
            return
        flags = self._flags()
        elements = self._element_msgs(rs, "a")
        sets = [("NEWSET", w.NLM_F_CREATE, w.set_body(n, "a")) for n in SET_NAMES]
        prepare = [("NEWTABLE", w.NLM_F_CREATE, w.table_body(flags))] + sets + elements
        prepare += netdev.sets_msgs(flags, rs, "a", elements)
        sock.batch(prepare)
        hooks = [("NEWCHAIN", w.NLM_F_CREATE, w.chain_body(c)) for c in ("input", "output", "forward")]
        hooks += self._rule_msgs(rs, "a")
        for dev in list_devices(self.netns):
            hooks += netdev.device_msgs(dev, rs.dhcp, "a", rs.dhcp_servers)
        try:
            sock.batch(hooks)
        except BackendError:
            try:  # the prepared tables hook nothing; do not leave them behind
                sock.batch(netdev.delete_msgs() + [("DELTABLE", 0, w.table_body())])
            except BackendError:
                pass  # the next apply sees a table of the wrong shape and replaces it
            raise

    def _run_probes(self):
        yield probes.probe_persist(self._socket())

    def _flags(self) -> int:
        """owner|persist where the probe found them; else none at all, because an
        owner-only table would vanish with the agent."""
        if self._table_flags is None:
            persist = next(p for p in self.probe() if p.name == probes.PERSIST)
            self._table_flags = WANTED_FLAGS if persist.present else 0
        return self._table_flags

    def _update(self, sock: NftSocket, rs, old: str) -> None:
        new = "b" if old == "a" else "a"
        elements = self._element_msgs(rs, new)
        netdev_in_force = self._netdev_present(sock)
        prepare = [("NEWSET", w.NLM_F_CREATE, w.set_body(n, new)) for n in SET_NAMES] + elements
        if netdev_in_force:  # its sets of the new generation too, hooked by nothing yet
            prepare += netdev.sets_msgs(self._flags(), rs, new, elements)
        sock.batch(prepare)
        swap = [("NEWTABLE", 0, w.table_body(self._flags()))]  # adopts an orphan
        swap += [("DELRULE", 0, w.chain_ref_body(c)) for c in ("input", "output", "forward")]
        swap += self._rule_msgs(rs, new)
        swap += [("DELSET", 0, w.set_name_body(n, old)) for n in SET_NAMES]
        if netdev_in_force:
            swap += netdev.swap_msgs(sock, list_devices(self.netns), rs.dhcp, new, old, rs.dhcp_servers)
        else:
            swap += netdev.table_msgs(self._flags(), list_devices(self.netns), rs, False, new, elements)
        try:
            sock.batch(swap)
        except BackendError:
            try:  # the loaded sets enforce nothing; do not leave them behind
                sock.batch([("DELSET", 0, w.set_name_body(n, new)) for n in SET_NAMES]
                           + ([("DELSET", 0, w.set_name_body(n, new), netdev.NFPROTO_NETDEV)
                               for n in SET_NAMES] if netdev_in_force else []))
            except BackendError:
                pass  # the next apply re-creates the table (shape check)
            raise

    def clear(self) -> None:
        sock = self._socket()
        msgs = netdev.delete_msgs() if self._netdev_present(sock) else []
        if sock.get("GETTABLE", w.table_body()) is not None:
            msgs.append(("DELTABLE", 0, w.table_body()))
        if msgs:
            sock.batch(msgs)
        self._plan = self._ruleset = None

    def read_back(self) -> ReadBack:
        sock = self._socket()
        state = readback.table_state(sock)
        if not state.present:
            present = self._netdev_present(sock)
            return ReadBack(present, None, {"table": None, "problems": ["table inet cordon is missing"]
                                            if present else [], "tamper": self._tamper(None),
                                            "limits": self._limits(self._tamper(None))})
        gen = state.gen
        elements = {name: readback.set_elements(sock, name, gen) for name in SET_FIELDS
                    if set_name(name, gen) in state.sets}
        seen = readback.dumped_rules(sock, gen)
        dhcp = readback.has_dhcp(seen)
        servers = readback.dhcp_servers(seen) if dhcp else ()
        problems = list(state.shape_problems) + readback.rule_problems(seen, chain_rules(dhcp, servers))
        lapsing = self._lapsing()
        hot = self._hot_may_hold(elements, lapsing)
        problems += readback.hot_problems(sock, gen, hot, w.NFPROTO_INET, f"inet {TABLE}")
        if state.flags & 1:
            problems.append(f"table inet {TABLE} is dormant (unhooked)")
        if state.flags & w.TABLE_F_PERSIST != self._flags() & w.TABLE_F_PERSIST:
            problems.append(f"table inet {TABLE} flags {w.flag_names(state.flags)} differ from "
                            f"{w.flag_names(self._flags())}")
        below, below_problems = netdev.read_back(sock, self._flags(), list_devices(self.netns), dhcp, gen,
                                                 {n: elements.get(n, ()) for n in SET_FIELDS}, servers, hot,
                                                 lapsing)
        problems += below_problems
        rules = {c: len(r) for c, r in seen.items()}
        details = {
            "table": f"inet {TABLE}",
            "table_flags": w.flag_names(state.flags),
            "owner_portid": state.owner,
            "owned_by_this_process": state.owner == sock.portid,
            "orphaned": state.owner is None,
            "elements": {name: len(items) for name, items in elements.items()},
            "rules": rules,
            "set_generation": gen,
            "problems": problems,
            "netdev": below,
            "tamper": (tamper := self._tamper(state.flags)),
            "limits": self._limits(tamper),
        }
        if problems:
            return ReadBack(True, None, details)
        details["dhcp"] = dhcp
        details["dhcp_servers"] = list(servers)
        plan = self._plan
        if plan is not None and (plan.dhcp, plan.dhcp_servers) == (dhcp, servers) \
                and build(plan).elements == elements:
            digest = plan.digest()  # exactly what this plan compiles to, after normalising
        else:
            digest = atoms_digest(dhcp, atoms_from_elements(elements), servers)
        return ReadBack(True, digest, details)

    def _lapsing(self) -> dict:
        """{set name: elements} of this process's plan whose kernel timeout runs out within
        LAPSE_WINDOW_S of now, either side: the kernel drops them at its own moment (the
        batch's, not the agent's clock) and each dump of a read-back is a different moment,
        so such an element may be in one table's dump and gone from the next. Only these,
        ours and due, may differ between copies; any other difference is tamper."""
        now = time.time()
        return {name: [el for el, at in ends.items() if abs(at - now) <= LAPSE_WINDOW_S]
                for name, ends in (self._ruleset.expires if self._ruleset else {}).items()}

    @staticmethod
    def _hot_may_hold(elements: dict, lapsing: dict) -> readback.HotIndex:
        """What a hot set's keys may lie in: the elements read back, and those lapsing (a
        key put into a hot set just before its element lapsed stays up to HOT_TIMEOUT_MS
        longer)."""
        if not any(lapsing.values()):
            return readback.HotIndex(elements)
        return readback.HotIndex({n: list(elements.get(n, ())) + lapsing.get(n, [])
                                  for n in set(elements) | set(lapsing)})

    def close(self) -> None:
        # Closing the socket gives up ownership; the persist flag keeps the table.
        for s in (self._sock, self._events, self._links):
            if s is not None:
                s.close()
        self._sock = self._events = self._links = None

    # --- extras for the daemon ----------------------------------------------------------

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` s for an nftables change in this namespace made by any
        other process (nft flush ruleset, delete table, ...). True if one happened."""
        if self._events is None:
            self._events = NftSocket(self.netns, groups=w.NFNLGRP_NFTABLES)
        if self._links is None:  # a device added while isolated needs its netdev chains
            self._links = LinkWatcher(self.netns)
        own = self._sock.portid if self._sock else None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._events.sock, self._links], [], [], left)
            if self._links in ready and self._links.wait(0):
                return True
            if not ready:
                return False
            try:
                pids = [pid for _, _, _, pid, _ in self._events.messages(left)]
            except BackendError:  # timed out
                return False
            except OSError:  # ENOBUFS: events were lost, so something changed
                return True
            if any(pid != own for pid in pids):
                return True
        return False

    def _tamper(self, flags: int | None) -> str:
        """`blocked` when the probe found owner|persist and the table in force (if any)
        reads back with them; else `detect-and-repair` (read_back + wait_for_change)."""
        ok = self._flags() & w.TABLE_F_PERSIST and (flags is None or flags & WANTED_FLAGS == WANTED_FLAGS)
        return "blocked" if ok else "detect-and-repair"

    @staticmethod
    def _limits(tamper: str) -> list[str]:
        return [REPAIR_WINDOW] if tamper == "detect-and-repair" else []

    def _netdev_present(self, sock) -> bool:
        return sock.get("GETTABLE", w.table_body(), netdev.NFPROTO_NETDEV) is not None

    @property
    def portid(self) -> int:
        """Netlink port id of the socket that owns the table (opens it if needed)."""
        return self._socket().portid

    # --- internals -----------------------------------------------------------------------

    def _socket(self) -> NftSocket:
        if self._sock is None:
            try:
                self._sock = NftSocket(self.netns)
            except OSError as exc:
                raise BackendError(f"cannot open a netfilter netlink socket: {exc}") from exc
        return self._sock

    def _create_batch(self, rs, state, flags: int, sock: NftSocket | None = None) -> list:
        msgs = []
        if state.present:  # not the shape Cordon installs: replace it
            msgs.append(("DELTABLE", 0, w.table_body()))
        msgs.append(("NEWTABLE", w.NLM_F_CREATE, w.table_body(flags)))
        msgs += [("NEWCHAIN", w.NLM_F_CREATE, w.chain_body(c)) for c in ("input", "output", "forward")]
        msgs += [("NEWSET", w.NLM_F_CREATE, w.set_body(n, "a")) for n in SET_NAMES]
        elements = self._element_msgs(rs, "a")
        msgs += elements + self._rule_msgs(rs, "a")
        return msgs + netdev.table_msgs(flags, list_devices(self.netns), rs,
                                       sock is not None and self._netdev_present(sock), "a", elements)

    @staticmethod
    def _element_msgs(rs, gen: str) -> list:
        return [("NEWSETELEM", w.NLM_F_CREATE, body) for name, items in rs.elements.items()
                for body in w.setelem_bodies(name, items, gen, rs.timeouts_ms(name))]

    @staticmethod
    def _rule_msgs(rs, gen: str) -> list:
        return [("NEWRULE", w.NLM_F_CREATE | w.NLM_F_APPEND, w.rule_body(chain, r, gen))
                for chain, rules in rs.chains().items() for r in rules]
