"""Compile a Plan into WinDivert filter texts (pure; no pydivert import).

WinDivert handles cannot *accept* a packet: a `Flag.DROP` handle drops what its filter
matches and lets the rest go on. So the kernel filter is NOT(allowed), written as
`(allowed ? false : true)` because `not` binds to a single term only.

Semantics (the same as the nftables backend, as far as a stateless filter allows):
- loopback always passes; IPv6, other protocols and forwarded packets are dropped;
- out flow: host->peer packets to the flow's ports pass; peer->host packets pass only
  as replies: TCP from the flow's ports to a local ephemeral port (the host's connections
  come from there) unless SYN without ACK (a new connection), ICMP of reply/error types.
  UDP replies of *exception* flows cannot be told apart from unsolicited datagrams by a
  stateless filter, so they go to the "guard" handle, which lets them in only for a
  (local port, peer, peer port) the host sent to first. Vendor and DNS flows stay in the
  kernel (they must never depend on Python), so their UDP replies are matched statelessly
  on the source port and a local ephemeral port: a listed limit (LIMITS).
- in flow: peer->host to the local ports pass (SYN included); host->peer replies pass
  only from those local ports, and never as a TCP SYN without ACK nor as TCP to a peer's
  well-known port (below 1024: a peer's connections come from above).
- IPv4 fragments are dropped (but on loopback): a filter judges packets, and a fragment
  after the first carries no ports, so it cannot be judged like the datagram it belongs to.
WinDivert keeps no connection state, so TCP replies are matched statelessly too: LIMITS.

Two shapes, chosen by size (WinDivert rejects filters of more than 256 objects):
- "exact": every flow in the kernel DROP filter; the guard sees only exception UDP.
- "coarse": the policy does not fit. The kernel DROP filter keeps only loopback, vendor,
  DNS and DHCP exact, and lets through packets to/from a few address ranges covering the
  exception networks; the guard handle takes exactly those (minus vendor/DNS/DHCP) and
  decides each packet in user space with a set lookup (platforms.windivert.FlowDecider).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from platforms.plan import DHCP_BROADCAST, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, Flow, Plan, PortRange

MAX_OBJECTS = 256          # WINDIVERT_FILTER_MAXLEN on Windows
OBJECT_BUDGET = 200        # keep a margin below the hard limit
COARSE_MAX_RANGES = 24     # address ranges in the coarse shape (4 objects each per direction)
ICMP_REPLY_TYPES = (0, 3, 11)  # echo reply, destination unreachable, time exceeded
EPHEMERAL_DEFAULT = (49152, 65535)  # Windows' default dynamic port range (IANA's)
PEER_PORTS_FROM = 1024         # a peer's own connections come from its ephemeral ports
FRAGMENT = "(ip.MF or ip.FragOff != 0)"

LIMITS = (
    "no connection state: TCP segments other than a bare SYN from an allowed peer address and "
    "port to a local ephemeral port (out flows), and from an allowed local port to a peer port "
    "above 1023 (in flows), pass without a connection; the host's stack answers those with RST",
    "no connection state: UDP datagrams from the vendor's and the resolvers' address and port to "
    "a local ephemeral port pass without the host having sent first (exception UDP replies are "
    "checked against what the host sent)",
    "IPv4 fragments are dropped: a datagram larger than the path MTU does not pass (DNS answers "
    "that big need TCP); IPv6 is dropped entirely",
)

_FIELD = re.compile(r"\b(?:[a-z]+\.[A-Za-z]+|outbound|inbound|loopback|ipv6|ip|tcp|udp|icmp|icmpv6|impostor)\b")


@dataclass(frozen=True)
class Filters:
    shape: str                 # "exact" | "coarse"
    drop: str                  # NETWORK layer, Flag.DROP
    forward: str               # NETWORK_FORWARD layer, Flag.DROP
    guard: str | None          # NETWORK layer, divert handle decided in user space; None = none

    def objects(self) -> dict[str, int]:
        return {k: count_objects(v) for k, v in
                (("drop", self.drop), ("forward", self.forward), ("guard", self.guard)) if v}


def count_objects(text: str) -> int:
    """Filter objects WinDivert compiles `text` into: one per field test (true/false are free)."""
    return len(_FIELD.findall(text))


def _any(terms: list[str]) -> str:
    terms = [t for t in terms if t]
    if not terms:
        return "false"
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def _all(*terms: str) -> str:
    return "(" + " and ".join(terms) + ")"


def _addr(field: str, network: str) -> str:
    net = ipaddress.IPv4Network(network)
    if net.num_addresses == 1:
        return f"{field} == {net.network_address}"
    return f"{field} >= {net.network_address} and {field} <= {net.broadcast_address}"


def _range_addr(field: str, first: ipaddress.IPv4Address, last: ipaddress.IPv4Address) -> str:
    return f"{field} == {first}" if first == last else f"{field} >= {first} and {field} <= {last}"


def _ports(field: str, ports: tuple[PortRange, ...]) -> str:
    parts = [f"{field} == {p.first}" if p.first == p.last else f"({field} >= {p.first} and {field} <= {p.last})"
             for p in sorted(ports)]
    return _any(parts) if parts else ""


def _no_new_tcp() -> str:
    # A TCP SYN without ACK opens a connection: never a reply.
    return "(not tcp.Syn or tcp.Ack)"


def _icmp_reply() -> str:
    return _any([f"icmp.Type == {t}" for t in ICMP_REPLY_TYPES])


def _protos(flow: Flow) -> tuple[str, ...]:
    return ("tcp", "udp", "icmp", "other") if flow.protocol == "any" else (flow.protocol,)


def _range(field: str, lo: int, hi: int) -> str:
    return f"{field} >= {lo} and {field} <= {hi}"


def _flow_terms(flow: Flow, udp_to_guard: bool, ephemeral: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(outbound terms, inbound terms) that let `flow` and its replies through the kernel."""
    out_t: list[str] = []
    in_t: list[str] = []
    dst, src = _addr("ip.DstAddr", flow.network), _addr("ip.SrcAddr", flow.network)
    for proto in _protos(flow):
        if proto == "other":
            # protocol "any": other IP protocols towards the peer of an out flow, both ways
            # for an in flow (the peer opens). No reply notion exists for them statelessly.
            other = "not tcp and not udp and not icmp"
            out_t.append(_all(other, dst))
            if flow.direction == "in":
                in_t.append(_all(other, src))
            continue
        if proto == "icmp":
            if flow.direction == "out":
                out_t.append(_all("icmp", dst))
                in_t.append(_all("icmp", src, _icmp_reply()))
            else:
                in_t.append(_all("icmp", src))
                out_t.append(_all("icmp", dst, _icmp_reply()))
            continue
        if flow.direction == "out":
            out_t.append(_all(proto, dst, *filter(None, [_ports(f"{proto}.DstPort", flow.ports)])))
            reply = [proto, src, *filter(None, [_ports(f"{proto}.SrcPort", flow.ports)])]
            to_ours = _range(f"{proto}.DstPort", *ephemeral)
            if proto == "tcp":
                in_t.append(_all(*reply, to_ours, _no_new_tcp()))
            elif not udp_to_guard:
                in_t.append(_all(*reply, to_ours))
            # else: the UDP reply region passes the kernel only towards the guard (see guard_region)
        else:
            in_t.append(_all(proto, src, *filter(None, [_ports(f"{proto}.DstPort", flow.ports)])))
            reply = [proto, dst, *filter(None, [_ports(f"{proto}.SrcPort", flow.ports)])]
            out_t.append(_all(*reply, f"tcp.DstPort >= {PEER_PORTS_FROM}", _no_new_tcp()) if proto == "tcp"
                         else _all(*reply))
    return out_t, in_t


BOOTP_COOKIE = 0x63825363        # the DHCP magic cookie, at UDP payload offset 236 (Payload32[59])
DHCP_PAYLOAD = (240, 1472)       # BOOTP fixed part + cookie .. one 1500-byte MTU less IPv4/UDP headers


def _bootp(op: int) -> str:
    """Sized and shaped like DHCP: payload length, BOOTP op (1 request, 2 reply), the cookie."""
    lo, hi = DHCP_PAYLOAD
    return (f"udp.PayloadLength >= {lo} and udp.PayloadLength <= {hi} and udp.Payload[0] == {op}"
            f" and udp.Payload32[59] == {BOOTP_COOKIE:#010x}")


def _dhcp_terms(servers: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """DHCP only as DHCP (Plan): requests to the broadcast address or a leased server;
    replies to the broadcast address (never routed: from the link) or from a leased server."""
    to = _any([f"ip.DstAddr == {a}" for a in (DHCP_BROADCAST, *servers)])
    came = _any([f"ip.DstAddr == {DHCP_BROADCAST}", *(f"ip.SrcAddr == {a}" for a in servers)])
    return ([_all("udp", f"udp.SrcPort == {DHCP_CLIENT_PORT}", f"udp.DstPort == {DHCP_SERVER_PORT}", to,
                  _bootp(1))],
            [_all("udp", f"udp.SrcPort == {DHCP_SERVER_PORT}", f"udp.DstPort == {DHCP_CLIENT_PORT}", came,
                  _bootp(2))])


def _by_direction(out_t: list[str], in_t: list[str]) -> str:
    parts = []
    if out_t:
        parts.append(_all("outbound", _any(out_t)))
    if in_t:
        parts.append(_all("inbound", _any(in_t)))
    return _any(parts)


def _guarded(flow: Flow) -> bool:
    """Exception out flows whose UDP replies need state: they go to the guard handle."""
    return flow.origin == "exception" and flow.direction == "out" and flow.protocol in ("udp", "any")


def base_allowed(plan: Plan, ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT) -> str:
    """Loopback, vendor, DNS and DHCP: always decided in the kernel, never by the guard."""
    out_t: list[str] = []
    in_t: list[str] = []
    if plan.dhcp:
        o, i = _dhcp_terms(plan.dhcp_servers)
        out_t += o
        in_t += i
    for flow in sorted(f for f in plan.flows if f.origin != "exception"):
        o, i = _flow_terms(flow, udp_to_guard=False, ephemeral=ephemeral)
        out_t += o
        in_t += i
    body = _by_direction(out_t, in_t)
    return _any(["loopback", _all("ip", body) if body != "false" else ""])


def _guard_udp_region(flows: list[Flow]) -> str:
    """Exception UDP to/from out-flow peers: the guard learns outbound, checks inbound."""
    out_t, in_t = [], []
    for f in flows:
        out_t.append(_all("udp", _addr("ip.DstAddr", f.network), *filter(None, [_ports("udp.DstPort", f.ports)])))
        in_t.append(_all("udp", _addr("ip.SrcAddr", f.network), *filter(None, [_ports("udp.SrcPort", f.ports)])))
    return _all("ip", _by_direction(out_t, in_t))


def exception_ranges(plan: Plan, max_ranges: int = COARSE_MAX_RANGES) -> list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]:
    """At most `max_ranges` address ranges covering every exception network. Neighbouring
    ranges with the smallest gap are merged first, so the cover stays as narrow as the
    budget allows (addresses in a merged gap reach the guard and are dropped there)."""
    nets = ipaddress.collapse_addresses(ipaddress.IPv4Network(f.network) for f in plan.flows if f.origin == "exception")
    ranges = [[int(n.network_address), int(n.broadcast_address)] for n in nets]
    ranges.sort()
    merged: list[list[int]] = []
    for lo, hi in ranges:  # collapse_addresses leaves adjacent networks apart
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    while len(merged) > max_ranges:
        i = min(range(len(merged) - 1), key=lambda k: (merged[k + 1][0] - merged[k][1], k))
        merged[i:i + 2] = [[merged[i][0], merged[i + 1][1]]]
    return [(ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi)) for lo, hi in merged]


def _coarse_region(plan: Plan) -> str:
    ranges = exception_ranges(plan)
    dst = [_range_addr("ip.DstAddr", a, b) for a, b in ranges]
    src = [_range_addr("ip.SrcAddr", a, b) for a, b in ranges]
    return _all("ip", _any([_all("outbound", _any([f"({t})" for t in dst])),
                            _all("inbound", _any([f"({t})" for t in src]))]))


def _negate(allowed: str) -> str:
    """Drop what `allowed` does not match, and every IPv4 fragment but on loopback."""
    return f"(loopback ? false : ({FRAGMENT} ? true : ({allowed} ? false : true)))"


def _guarded_by(base: str, region: str) -> str:
    """The guard's filter: the region, never what the kernel decides, never a fragment."""
    return f"({base} ? false : ({FRAGMENT} ? false : {region}))"


def compile_plan(plan: Plan, budget: int = OBJECT_BUDGET,
                 ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT) -> Filters:
    """The filters that enforce `plan`; replies of connections the host opened are let in
    to its `ephemeral` port range (first, last). Raises ValueError if even the coarse
    shape does not fit (too many vendor/DNS flows to keep them in the kernel)."""
    base = base_allowed(plan, ephemeral)
    exceptions = sorted(f for f in plan.flows if f.origin == "exception")
    forward = "true"  # no plan flow is ever forwarded: the host must not route around isolation

    out_t, in_t = [], []
    for flow in exceptions:
        o, i = _flow_terms(flow, udp_to_guard=_guarded(flow), ephemeral=ephemeral)
        out_t += o
        in_t += i
    guarded = [f for f in exceptions if _guarded(f)]
    guard_region = _guard_udp_region(guarded) if guarded else None
    exc_allowed = _any([_all("ip", _by_direction(out_t, in_t)) if (out_t or in_t) else "", guard_region or ""])
    allowed = _any([base, exc_allowed]) if exc_allowed != "false" else base
    drop = _negate(allowed)
    guard = _guarded_by(base, guard_region) if guard_region else None
    if count_objects(drop) <= budget and (guard is None or count_objects(guard) <= budget):
        return Filters("exact", drop, forward, guard)

    region = _coarse_region(plan)
    drop = _negate(_any([base, region]))
    guard = _guarded_by(base, region)
    if count_objects(drop) > budget:
        raise ValueError(f"flows: vendor/DNS/DHCP flows alone need {count_objects(drop)} WinDivert filter "
                         f"objects, more than the budget of {budget}")
    return Filters("coarse", drop, forward, guard)


def render(plan: Plan, ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT, limits: tuple[str, ...] = LIMITS) -> str:
    """The text `cordon rules --backend windivert` prints: the paths it leaves open
    (`limits`), each handle and its filter."""
    f = compile_plan(plan, ephemeral=ephemeral)
    objs = f.objects()
    lines = [f"# WinDivert filters, shape {f.shape} (plan digest {plan.digest()}, mode {plan.mode}, "
             f"local ephemeral ports {ephemeral[0]}-{ephemeral[1]})",
             *(f"# limit: {text}" for text in limits),
             f"# handle drop: layer NETWORK, flags DROP, {objs['drop']} objects",
             f.drop,
             f"# handle forward: layer NETWORK_FORWARD, flags DROP, {objs['forward']} objects",
             f.forward]
    if f.guard:
        lines += [f"# handle guard: layer NETWORK, divert to user space (exception packets only), "
                  f"{objs['guard']} objects", f.guard]
    return "\n".join(lines) + "\n"
