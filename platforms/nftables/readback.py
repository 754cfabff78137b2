"""Read what the kernel holds in table inet cordon, decoded into Cordon's own types, and
compare it with the render of a plan: every chain, set and rule. Rules are compared by
tag; anything missing, extra, foreign or undecodable is reported by name. A count is
never proof."""
from __future__ import annotations

import bisect
import ipaddress
import struct
from dataclasses import dataclass

from platforms.nftables import wire as w
from platforms.nftables.exprs import Undecodable, decode_list
from platforms.nftables.netlink import NftSocket
from platforms.nftables.shape import (DHCP_BROADCAST_TAG, DHCP_SERVER_TAG, FIELDS, GENERATIONS, HOT_SETS,
                                     HOT_TIMEOUT_MS, SET_NAMES, TABLE, set_name)
from platforms.nftables.vocabulary import TAG_PREFIX, IpAddr, Rule, decode_rule, tag_of


def table_chains(sock: NftSocket, family: int = w.NFPROTO_INET):
    """(name, chain attributes, hook attributes) of every chain of table TABLE."""
    for payload in sock.dump("GETCHAIN", w.s(w.NFTA_CHAIN_TABLE, TABLE), family):
        a = w.attr_map(payload)
        if w.cstr(a.get(w.NFTA_CHAIN_TABLE, b"")) == TABLE:
            yield w.cstr(a[w.NFTA_CHAIN_NAME]), a, w.attr_map(a.get(w.NFTA_CHAIN_HOOK, b""))


def hook_policy(a: dict, hook: dict) -> tuple:
    """What decides whether a chain enforces: hook number, priority and policy (None if absent)."""
    return (w.be32(hook[w.NFTA_HOOK_HOOKNUM]) if w.NFTA_HOOK_HOOKNUM in hook else None,
            struct.unpack(">i", hook[w.NFTA_HOOK_PRIORITY])[0] if w.NFTA_HOOK_PRIORITY in hook else None,
            w.be32(a[w.NFTA_CHAIN_POLICY]) if w.NFTA_CHAIN_POLICY in a else None)


@dataclass(frozen=True)
class TableState:
    present: bool
    flags: int = 0
    owner: int | None = None
    sets: dict | None = None
    gen: str | None = None
    shape_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeenRule:
    """One rule of a dump: its tag (None if it has none), and either the decoded Rule or
    why it could not be decoded."""
    tag: str | None
    rule: Rule | None
    error: str | None = None


def table_state(sock: NftSocket) -> TableState:
    raw = sock.get("GETTABLE", w.table_body())
    if raw is None:
        return TableState(False)
    flags, owner = w.table_flags_owner(raw)
    problems = []
    chains = {name: hook_policy(a, hook) + (w.cstr(a.get(w.NFTA_CHAIN_TYPE, b"")),)
              for name, a, hook in table_chains(sock)}
    expected_chains = {c: (w.HOOKS[c], 0, w.NF_DROP, "filter") for c in w.HOOKS}
    if chains != expected_chains:
        problems.append(f"chains {sorted(chains)} differ from {sorted(expected_chains)}")
    sets = {}
    for payload in sock.dump("GETSET", w.s(w.NFTA_SET_TABLE, TABLE)):
        a = w.attr_map(payload)
        if w.cstr(a.get(w.NFTA_SET_TABLE, b"")) == TABLE:
            sets[w.cstr(a[w.NFTA_SET_NAME])] = (w.be32(a[w.NFTA_SET_KEY_TYPE]),
                                                 w.be32(a[w.NFTA_SET_FLAGS]), _timeout(a))
    gen = next((g for g in GENERATIONS if set_name("out_l4", g) in sets), "a")
    expected_sets = {set_name(n, gen): (w.be32(w.attr_map(w.set_body(n, gen))[w.NFTA_SET_KEY_TYPE]),
                                        w.set_flags(n), HOT_TIMEOUT_MS if n in HOT_SETS else 0)
                     for n in SET_NAMES}
    if sets != expected_sets:
        problems.append(f"sets {sorted(sets)} differ from what Cordon installs")
    return TableState(True, flags, owner, sets, gen, tuple(problems))


def _timeout(a: dict) -> int:
    raw = a.get(w.NFTA_SET_TIMEOUT)
    return int.from_bytes(raw, "big") if raw else 0


def set_elements(sock: NftSocket, name: str, gen: str, family: int = w.NFPROTO_INET) -> tuple:
    """The elements of set `name` of generation `gen` in table TABLE of `family`, decoded
    and sorted (a missing set reads as empty; a rule cannot use a missing set); a hot
    set's elements are points, each field (v, v)."""
    fields = FIELDS[name]
    out = []
    for payload in sock.dump("GETSETELEM", w.set_ref_body(name, gen), family):
        a = w.attr_map(payload)
        for _, elem in w.parse_attrs(a.get(w.NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
            e = w.attr_map(elem)
            start = w.unpack_key(fields, w.attr_map(e[w.NFTA_SET_ELEM_KEY])[w.NFTA_DATA_VALUE])
            end_attr = e.get(w.NFTA_SET_ELEM_KEY_END)
            end = w.unpack_key(fields, w.attr_map(end_attr)[w.NFTA_DATA_VALUE]) if end_attr else start
            out.append(tuple(zip(start, end)))
    return tuple(sorted(out))


def dumped_rules(sock: NftSocket, gen: str) -> dict[str, list[SeenRule]]:
    rules: dict[str, list[SeenRule]] = {}
    for payload in sock.dump("GETRULE", w.s(w.NFTA_RULE_TABLE, TABLE)):
        a = w.attr_map(payload)
        if w.cstr(a.get(w.NFTA_RULE_TABLE, b"")) != TABLE:
            continue
        rules.setdefault(w.cstr(a[w.NFTA_RULE_CHAIN]), []).append(
            decode_seen(a.get(w.NFTA_RULE_EXPRESSIONS, b""), a.get(w.NFTA_RULE_USERDATA), gen))
    return rules


def decode_seen(exprs: bytes, udata: bytes | None, gen: str) -> SeenRule:
    tag = tag_of(udata)
    if tag is None or not tag.startswith(TAG_PREFIX):
        try:
            names = [e.NAME for e in decode_list(exprs)]
        except Undecodable as exc:
            names = [f"undecodable: {exc}"]
        return SeenRule(tag, None, f"{' '.join(names)}")
    try:
        return SeenRule(tag, decode_rule(exprs, udata, gen))
    except (Undecodable, KeyError, IndexError) as exc:
        return SeenRule(tag, None, str(exc) or type(exc).__name__)


def has_dhcp(seen: dict[str, list[SeenRule]]) -> bool:
    return any(r.tag == DHCP_BROADCAST_TAG for rules in seen.values() for r in rules)


def dhcp_servers(seen: dict[str, list[SeenRule]]) -> tuple[str, ...]:
    """The DHCP servers the output chain's rules let the host send to, in rule order (the
    order Cordon installs: sorted). The input chain must then hold the same servers'
    rules; rule_problems against chain_rules(dhcp, these) says whether it does."""
    out = []
    for r in seen.get("output", []):
        if r.rule is not None and r.tag.startswith(DHCP_SERVER_TAG):
            out += [m.address for m in r.rule.matches if isinstance(m, IpAddr)]
    return tuple(out)


def rule_problems(seen: dict[str, list[SeenRule]], expected: dict[str, tuple[Rule, ...]]) -> list[str]:
    """What differs between the dumped rules and the expected ones, one line per rule."""
    problems = []
    for chain in sorted(set(seen) | set(expected)):
        want = {r.tag: r for r in expected.get(chain, ())}
        tags = []
        for r in seen.get(chain, []):
            if r.tag is None or not r.tag.startswith(TAG_PREFIX):
                problems.append(f"{chain}: foreign rule ({r.error})")
            elif r.rule is None:
                problems.append(f"{chain}: rule {r.tag}: undecodable ({r.error})")
            elif r.tag not in want or r.tag in tags:
                problems.append(f"{chain}: rule {r.tag}: extra")
            elif r.rule != want[r.tag]:
                problems.append(f"{chain}: rule {r.tag}: differs from what Cordon installs")
            tags.append(r.tag)
        problems += [f"{chain}: rule {t}: missing" for t in want if t not in tags]
        if not problems and tags != list(want):
            problems.append(f"{chain}: rules out of order: {tags}")
    return problems


def hot_problems(sock: NftSocket, gen: str, index: "HotIndex", family: int, table: str) -> list[str]:
    """Every key in a hot set must lie in an element of the interval set it caches (as
    `index` holds them); packets only put such keys there, so another is tamper (a table
    without owner|persist can be written by any root process)."""
    problems = []
    for hot, base in HOT_SETS.items():
        strays = [key for key in set_elements(sock, hot, gen, family) if not index.holds(base, key)]
        if strays:
            first = " . ".join([str(ipaddress.IPv4Address(strays[0][0][0]))] + [str(v) for v, _ in strays[0][1:]])
            problems.append(f"{table} set {set_name(hot, gen)}: {len(strays)} keys in no element of "
                            f"{set_name(base, gen)} (e.g. {first})")
    return problems


class HotIndex:
    """The elements a hot set's keys may lie in, {set name: elements}, with a stabbing
    index per set built at its first look (a read-back whose hot sets are empty builds
    none; the inet and the netdev check share one)."""

    def __init__(self, elements: dict) -> None:
        self.elements = elements
        self._stabs: dict[str, _Stab] = {}

    def holds(self, base: str, key) -> bool:
        stab = self._stabs.get(base)
        if stab is None:
            stab = self._stabs[base] = _Stab(self.elements.get(base, ()))
        return stab.holds(key)


class _Stab:
    """Which of a set's elements (disjoint boxes, one (first, last) per field) hold a
    point: the elements sorted by their first field's start, with a running maximum of
    its end, so a look goes back only over elements whose first field can reach."""

    def __init__(self, elements) -> None:
        self.elements = sorted(elements)
        self.starts = [el[0][0] for el in self.elements]
        self.reach, top = [], -1
        for el in self.elements:
            top = max(top, el[0][1])
            self.reach.append(top)

    def holds(self, key) -> bool:
        point = [v for v, _ in key]
        i = bisect.bisect_right(self.starts, point[0]) - 1
        while i >= 0 and self.reach[i] >= point[0]:
            if all(lo <= v <= hi for v, (lo, hi) in zip(point, self.elements[i])):
                return True
            i -= 1
        return False
