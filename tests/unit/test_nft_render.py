"""Pure parts of the nftables backend: making boxes disjoint, plan -> set elements,
nft text, and the netlink encoding of set elements. No root needed."""
from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings, strategies as st

from platforms.plan import Flow, Plan, PortRange
from platforms.nftables import wire as w
from platforms.nftables.boxes import disjoint
from platforms.nftables.render import atoms_from_elements, build, render_text
from platforms.nftables import NftablesBackend

box = st.tuples(st.integers(0, 15), st.integers(0, 15), st.integers(0, 15), st.integers(0, 15)) \
    .map(lambda t: (min(t[0], t[1]), max(t[0], t[1]), min(t[2], t[3]), max(t[2], t[3])))


def points(boxes) -> set:
    return {(a, b) for a0, a1, b0, b1 in boxes for a in range(a0, a1 + 1) for b in range(b0, b1 + 1)}


@settings(max_examples=300)
@given(st.lists(box, max_size=8))
def test_disjoint_keeps_the_union_and_removes_every_overlap(boxes):
    out = disjoint(boxes)
    assert points(out) == points(boxes)
    assert sum(len(points([b])) for b in out) == len(points(out))  # no point twice


@given(st.lists(st.integers(0, 50), unique=True, max_size=10))
def test_disjoint_leaves_non_overlapping_boxes_alone(starts):
    boxes = [(10 * s, 10 * s + 9, s, s + 3) for s in starts]
    assert disjoint(boxes) == sorted(boxes)


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_plan_becomes_set_elements():
    plan = Plan("standard", (
        Flow("out", "tcp", "198.51.100.10/32", (PortRange(443, 443),), "vendor"),
        Flow("out", "udp", "192.0.2.53/32", (PortRange(53, 53),), "dns"),
        Flow("out", "tcp", "203.0.113.0/24", ()),
        Flow("in", "tcp", "203.0.113.5/32", (PortRange(3389, 3389), PortRange(5000, 5010))),
        Flow("in", "icmp", "203.0.113.5/32"),
        Flow("out", "any", "203.0.113.20/32"),
    ), dhcp=True)
    els = build(plan).elements
    assert set(els["out_l4"]) == {
        ((_ip("198.51.100.10"),) * 2, (6, 6), (443, 443)),
        ((_ip("192.0.2.53"),) * 2, (17, 17), (53, 53)),
        ((_ip("203.0.113.0"), _ip("203.0.113.255")), (6, 6), (0, 65535)),
    }
    assert set(els["in_l4"]) == {((_ip("203.0.113.5"),) * 2, (6, 6), (3389, 3389)),
                                 ((_ip("203.0.113.5"),) * 2, (6, 6), (5000, 5010))}
    assert els["in_l3"] == (((_ip("203.0.113.5"),) * 2, (1, 1)),)
    assert els["out_l3"] == (((_ip("203.0.113.20"),) * 2, (0, 255)),)
    assert atoms_from_elements(els) == plan.atoms()


_NET = st.tuples(st.integers(0, 15), st.sampled_from([28, 29, 30, 31, 32])).map(
    lambda t: str(ipaddress.ip_network(f"203.0.113.{t[0]}/{t[1]}", strict=False)))
_PORTS = st.lists(st.tuples(st.integers(1, 6), st.integers(0, 2)).map(lambda t: PortRange(t[0], t[0] + t[1])),
                  max_size=2).map(tuple)
_FLOW = st.one_of(
    st.builds(lambda d, p, n, ports: Flow(d, p, n, ports), st.sampled_from(["in", "out"]),
              st.sampled_from(["tcp", "udp"]), _NET, _PORTS),
    st.builds(lambda d, p, n: Flow(d, p, n), st.sampled_from(["in", "out"]), st.sampled_from(["icmp", "any"]), _NET))


def _allows(plan: Plan, direction: str, proto: int, addr: int, port: int) -> bool:
    """DESIGN §1 read straight off the flows (ipaddress, no renderer code)."""
    ip = ipaddress.IPv4Address(addr)
    for f in plan.flows:
        if f.direction != direction or ip not in ipaddress.ip_network(f.network):
            continue
        if f.protocol == "any" or f.protocol == "icmp" and proto == 1:
            return True
        if {"tcp": 6, "udp": 17}.get(f.protocol) == proto and (
                not f.ports or any(r.first <= port <= r.last for r in f.ports)):
            return True
    return False


def _in_elements(els: dict, direction: str, proto: int, addr: int, port: int) -> bool:
    l4 = [el for el in els[f"{direction}_l4"] if el[0][0] <= addr <= el[0][1] and el[1][0] <= proto <= el[1][1]
          and el[2][0] <= port <= el[2][1]] if proto in (6, 17) else []
    l3 = [el for el in els[f"{direction}_l3"] if el[0][0] <= addr <= el[0][1] and el[1][0] <= proto <= el[1][1]]
    return bool(l4 or l3)


@settings(max_examples=200, deadline=None)
@given(st.lists(_FLOW, max_size=6))
def test_set_elements_allow_exactly_what_the_flows_allow(flows):
    """Every (direction, protocol, address, port) point of a small space: in the set
    elements exactly when a flow allows it; and the timed path (a far expiry on every
    flow) gives the same elements."""
    plan = Plan("standard", tuple(flows))
    els = build(plan).elements
    base = _ip("203.0.113.0")
    for direction in ("in", "out"):
        for proto in (1, 6, 17, 47):
            for addr in range(base - 1, base + 17):
                for port in (0, 1, 2, 3, 4, 6, 7, 8, 9, 65535) if proto in (6, 17) else (0,):
                    assert _in_elements(els, direction, proto, addr, port) == \
                        _allows(plan, direction, proto, addr, port), (direction, proto, addr, port)
    for items in els.values():
        assert list(items) == sorted(items)
    far = Plan("standard", tuple(Flow(f.direction, f.protocol, f.network, f.ports, expires=4e9) for f in flows))
    timed = build(far)
    assert timed.elements == els and all(t == 4e9 for v in timed.expires.values() for t in v.values())


def _covering_ends(flows, direction: str, proto: int, addr: int, port: int):
    """DESIGN §11 read off the flows: a point lasts as long as the longest-lasting flow
    that allows it (None: one of them never stops); absent if none allows it."""
    ends = [f.expires for f in flows if _allows(Plan("standard", (f,)), direction, proto, addr, port)]
    return "absent" if not ends else None if None in ends else max(ends)


def _element_ends(rs, direction: str, proto: int, addr: int, port: int):
    """How long the kernel lets the point pass: the rules look it up in the l4 and the l3
    set, so as long as the longest-lasting element that holds it."""
    ends = [rs.expires.get(name, {}).get(el) for name in (f"{direction}_l4", f"{direction}_l3")
            for el in rs.elements[name]
            if el[0][0] <= addr <= el[0][1] and el[1][0] <= proto <= el[1][1]
            and (name.endswith("_l3") or el[2][0] <= port <= el[2][1])]
    return "absent" if not ends else None if None in ends else max(ends)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_FLOW, st.sampled_from([None, 4e9, 5e9])), max_size=6))
def test_timed_elements_last_as_long_as_the_longest_flow_behind_them(pairs):
    flows = [Flow(f.direction, f.protocol, f.network, f.ports, expires=e) for f, e in pairs]
    if not any(f.expires for f in flows):
        flows.append(Flow("out", "tcp", "198.51.100.1/32", (PortRange(1, 1),), expires=4e9))
    rs = build(Plan("standard", tuple(flows)))
    base = _ip("203.0.113.0")
    for direction in ("in", "out"):
        for proto in (1, 6, 17):
            for addr in range(base - 1, base + 17):
                for port in (0, 1, 2, 4, 7, 9) if proto in (6, 17) else (0,):
                    assert _element_ends(rs, direction, proto, addr, port) == \
                        _covering_ends(flows, direction, proto, addr, port), (direction, proto, addr, port)


def test_a_32_inside_a_24_on_the_same_port_is_merged():
    plan = Plan("standard", (Flow("out", "tcp", "203.0.113.0/24", (PortRange(443, 443),)),
                             Flow("out", "tcp", "203.0.113.7/32", (PortRange(443, 443),))))
    assert build(plan).elements["out_l4"] == (
        ((_ip("203.0.113.0"), _ip("203.0.113.255")), (6, 6), (443, 443)),)


def test_any_protocol_covers_icmp_to_the_same_peer():
    plan = Plan("standard", (Flow("in", "any", "192.0.2.0/28"), Flow("in", "icmp", "192.0.2.1/32")))
    assert build(plan).elements["in_l3"] == (((_ip("192.0.2.0"), _ip("192.0.2.15")), (0, 255)),)


def test_rendered_text_has_no_blanket_or_source_port_accepts():
    plan = Plan("standard", (Flow("out", "tcp", "198.51.100.10/32", (PortRange(443, 443),)),),
                dhcp=False)
    full = NftablesBackend().render(plan)
    # The netdev layer below passes header-matched candidates to the inet table (it has
    # no conntrack at ingress); the inet table alone decides, so it is what is checked.
    text, below = full.split("table netdev cordon\n", 1)
    assert text.count("policy drop;") == 3
    assert below.count("policy drop;") == 2 * below.count("hook egress device")
    assert "established" not in text and "sport" not in text
    assert "198.51.100.10 . 6 . 443" in text
    with_dhcp = render_text(build(Plan("standard", (), dhcp=True, dhcp_servers=("192.0.2.1",))))
    dhcp_lines = [ln.strip() for ln in with_dhcp.splitlines() if "dport 67" in ln or "dport 68" in ln]
    # DHCP only to/from the broadcast address or the leased server: no line to any address
    assert sorted(ln.split(" accept")[0] for ln in dhcp_lines) == [
        "udp sport 67 udp dport 68 ip daddr 255.255.255.255",
        "udp sport 67 udp dport 68 ip saddr 192.0.2.1",
        "udp sport 68 udp dport 67 ip daddr 192.0.2.1",
        "udp sport 68 udp dport 67 ip daddr 255.255.255.255"]


def test_set_elements_encode_start_and_end_keys_in_network_order():
    el = (((_ip("203.0.113.0"), _ip("203.0.113.255")), (6, 6), (1000, 2000)),)
    body = w.setelem_bodies("out_l4", el, "a")[0]
    attrs = w.attr_map(body)
    assert w.cstr(attrs[w.NFTA_SET_ELEM_LIST_SET]) == "out_l4_a"
    (_, elem), = w.parse_attrs(attrs[w.NFTA_SET_ELEM_LIST_ELEMENTS])
    e = w.attr_map(elem)
    start = w.attr_map(e[w.NFTA_SET_ELEM_KEY])[w.NFTA_DATA_VALUE]
    end = w.attr_map(e[w.NFTA_SET_ELEM_KEY_END])[w.NFTA_DATA_VALUE]
    assert start == bytes([203, 0, 113, 0, 6, 0, 0, 0]) + struct.pack(">H", 1000) + b"\0\0"
    assert end == bytes([203, 0, 113, 255, 6, 0, 0, 0]) + struct.pack(">H", 2000) + b"\0\0"


def test_big_sets_are_split_below_the_64k_attribute_limit():
    els = tuple(((i, i), (6, 6), (80, 80)) for i in range(5000))
    bodies = w.setelem_bodies("out_l4", els, "b")
    assert len(bodies) == 5
    for body in bodies:
        assert len(w.attr_map(body)[w.NFTA_SET_ELEM_LIST_ELEMENTS]) < 65535
