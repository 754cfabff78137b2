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
- IPv4 fragments are dropped (but on loopback) where the platform judges them (`fragments`):
  a fragment after the first carries no ports, so it cannot be judged like its datagram.
WinDivert keeps no connection state, so TCP replies are matched statelessly too: LIMITS.

Two shapes, chosen by size (WinDivert rejects filters of more than 256 objects):
- "split": a base handle (non-IPv4, fragments, DHCP's shape) and one DROP handle per
  address range (partition.py), each with the flows that meet its range; at most
  MAX_PARTITIONS. Every TCP and ICMP decision is in the kernel; a guard per range sees only
  exception UDP.
- "coarse": the policy does not split. The kernel DROP filter keeps only loopback, vendor,
  DNS and DHCP exact, and lets through packets to/from a few address ranges covering the
  exception networks; the guard handle takes exactly those (minus vendor/DNS/DHCP) and
  decides each packet in user space with a set lookup (platforms.windivert.decider.FlowDecider).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from platforms.plan import DHCP_BROADCAST, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, Flow, Plan, PortRange
from platforms.windivert.partition import ADDRESS_END, Partition, split

MAX_OBJECTS = 256          # WINDIVERT_FILTER_MAXLEN on Windows
OBJECT_BUDGET = 200        # keep a margin below the hard limit
COARSE_MAX_RANGES = 24     # address ranges in the coarse shape (4 objects each per direction)
MAX_PARTITIONS = 16        # DROP handles for the flows (one per address range); more: coarse
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
    shape: str                 # "split" | "coarse"
    drops: tuple[str, ...]     # NETWORK layer, Flag.DROP; a packet passes only if none matches it:
                               # drops[0] the base handle, then one per address range
    forward: str               # NETWORK_FORWARD layer, Flag.DROP
    guards: tuple[str, ...]    # NETWORK layer, diverting handles decided in user space (disjoint)

    def handles(self) -> list[tuple[str, str]]:
        """(name, filter) of every handle: base, drop1.., forward, guard1.."""
        return ([("base", self.drops[0])] + [(f"drop{i}", t) for i, t in enumerate(self.drops[1:], 1)]
                + [("forward", self.forward)] + [(f"guard{i}", t) for i, t in enumerate(self.guards, 1)])

    def objects(self) -> dict[str, int]:
        return {name: count_objects(text) for name, text in self.handles()}


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
    """`field` in one of `ports`. Several ranges are a chain of ordered tests, not an `or`:
    a packet outside them then fails on a range (below, between, above), which eBPFDivert's
    lowering keeps exact in its kernel rules; a failed `or` of equalities piles up excluded
    points, of which a kernel rule holds one."""
    rs = sorted(ports)
    if len(rs) <= 1:
        return "" if not rs else (f"{field} == {rs[0].first}" if rs[0].first == rs[0].last
                                  else f"({field} >= {rs[0].first} and {field} <= {rs[0].last})")
    text = "false"
    for r in reversed(rs):
        text = f"({field} < {r.first} ? false : ({field} <= {r.last} ? true : {text}))"
    return text


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
            elif udp_to_guard:  # the guard holds what the kernel lets by here to what the host sent
                in_t.append(_all(*reply))
            else:
                in_t.append(_all(*reply, to_ours))
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
    """Drop what `allowed` does not match, but on loopback (fragments: the base handle)."""
    return f"(loopback ? false : ({allowed} ? false : true))"


def _guarded_by(base: str, region: str) -> str:
    """The guard's filter: the region, never what the kernel decides, never a fragment."""
    return f"({base} ? false : ({FRAGMENT} ? false : {region}))"


def _dhcp_ports() -> str:
    return (f"(udp and ((udp.SrcPort == {DHCP_CLIENT_PORT} and udp.DstPort == {DHCP_SERVER_PORT}) or "
            f"(udp.SrcPort == {DHCP_SERVER_PORT} and udp.DstPort == {DHCP_CLIENT_PORT})))")


def _may_use_dhcp_ports(flow: Flow) -> bool:
    return flow.protocol in ("udp", "any") and (
        not flow.ports or any(p.first <= port <= p.last for p in flow.ports
                              for port in (DHCP_CLIENT_PORT, DHCP_SERVER_PORT)))


def _base_handle(plan: Plan, ephemeral: tuple[int, int], fragments: bool) -> str:
    """What no address range judges: anything but IPv4 (IPv6 too), IPv4 fragments
    (`fragments`), and, with DHCP on, a packet on the DHCP ports that is neither DHCP to a
    peer it may reach nor of a flow that allows those ports (the ranges let such packets by)."""
    dhcp = "false"
    if plan.dhcp:
        out_t, in_t = _dhcp_terms(plan.dhcp_servers)
        for flow in sorted(f for f in plan.flows if _may_use_dhcp_ports(f)):
            o, i = _flow_terms(flow, udp_to_guard=_guarded(flow), ephemeral=ephemeral)
            out_t, in_t = out_t + o, in_t + i
        dhcp = f"({_dhcp_ports()} ? ({_by_direction(out_t, in_t)} ? false : true) : false)"
    ipv4 = f"({FRAGMENT} ? true : {dhcp})" if fragments else dhcp
    return f"(loopback ? false : (ip ? {ipv4} : true))"


def _inside(part: Partition) -> str:
    """The packet's remote address (the destination outbound, the source inbound) is in `part`."""
    a, b = ipaddress.IPv4Address(part.first), ipaddress.IPv4Address(part.last)
    return f"(outbound ? ({_range_addr('ip.DstAddr', a, b)}) : ({_range_addr('ip.SrcAddr', a, b)}))"


def _range_handle(part: Partition, allowed: str) -> str:
    """Drops a packet whose remote address is in `part` unless `allowed`; lets all else by."""
    # "ip" first: an address test on a packet of unknown version is widened by eBPFDivert's
    # lowering (it could be IPv6), so nothing after it would stay exact in its kernel rules.
    return f"(loopback ? false : ((ip and {_inside(part)}) ? ({allowed} ? false : true) : false))"


def _kernel_first(flow: Flow) -> tuple:
    """Order within a handle: vendor, then DNS, then the rest. eBPFDivert's lowering keeps
    the first flow of each direction exact in its kernel rules (see the backend's limits)."""
    return ({"vendor": 0, "dns": 1}.get(flow.origin, 2), flow)


def _split(plan: Plan, budget: int, ephemeral: tuple[int, int], fragments: bool) -> Filters | None:
    """One DROP handle per address range, each holding the flows that meet its range; a
    guard per range for the exception UDP replies there. None: the plan does not split
    into MAX_PARTITIONS handles of `budget` objects."""
    flows = sorted(plan.flows, key=_kernel_first)
    terms = [_flow_terms(f, udp_to_guard=_guarded(f), ephemeral=ephemeral) for f in flows]
    dhcp_pass = ([_all("udp", f"udp.SrcPort == {DHCP_CLIENT_PORT}", f"udp.DstPort == {DHCP_SERVER_PORT}")],
                 [_all("udp", f"udp.SrcPort == {DHCP_SERVER_PORT}", f"udp.DstPort == {DHCP_CLIENT_PORT}")]) \
        if plan.dhcp else ([], [])
    whole = Partition(0, ADDRESS_END, ())
    fixed = count_objects(_range_handle(whole, _by_direction(*dhcp_pass))) + 2  # + "outbound"/"inbound"
    items = []
    for f, (o, i) in zip(flows, terms):
        net = f.ip_network
        items.append((int(net.network_address), int(net.broadcast_address),
                      sum(count_objects(t) for t in o + i)))
    parts = split(items, budget - fixed)
    if parts is None or len(parts) > MAX_PARTITIONS:
        return None
    drops, guards = [_base_handle(plan, ephemeral, fragments)], []
    for part in parts:
        members = [flows[k] for k in part.members]
        out_t = [t for k in part.members for t in terms[k][0]] + dhcp_pass[0]
        in_t = [t for k in part.members for t in terms[k][1]] + dhcp_pass[1]
        drops.append(_range_handle(part, _by_direction(out_t, in_t)))
        guarded = [f for f in members if _guarded(f)]
        if guarded:  # never vendor, DNS nor DHCP: those stay decided in the kernel
            kernel = [k for k in part.members if flows[k].origin != "exception"]
            kernel_dir = _by_direction([t for k in kernel for t in terms[k][0]] + dhcp_pass[0],
                                       [t for k in kernel for t in terms[k][1]] + dhcp_pass[1])
            guards.append(f"({_inside(part)} ? {_guarded_by(kernel_dir, _guard_udp_region(guarded))} : false)")
    filters = Filters("split", tuple(drops), "true", tuple(guards))
    return filters if max(filters.objects().values()) <= budget else None


def compile_plan(plan: Plan, budget: int = OBJECT_BUDGET, ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT,
                 fragments: bool = True) -> Filters:
    """The filters that enforce `plan`; replies of connections the host opened are let in
    to its `ephemeral` port range (first, last). `fragments`: drop IPv4 fragments (False
    where the platform passes them whatever the filter: eBPFDivert). Raises ValueError if
    even the coarse shape does not fit (too many vendor/DNS flows to keep them in the kernel)."""
    filters = _split(plan, budget, ephemeral, fragments)
    if filters is not None:
        return filters
    # forward "true": no plan flow is ever forwarded: the host must not route around isolation
    base = base_allowed(plan, ephemeral)
    region = _coarse_region(plan)
    drop = _negate(_any([base, region]))
    if count_objects(drop) > budget:
        raise ValueError(f"flows: vendor/DNS/DHCP flows alone need {count_objects(drop)} WinDivert filter "
                         f"objects, more than the budget of {budget}")
    return Filters("coarse", (_base_handle(plan, ephemeral, fragments), drop), "true",
                   (_guarded_by(base, region),))


HANDLE_KIND = {"base": "layer NETWORK, flags DROP (what no address range judges)",
               "drop": "layer NETWORK, flags DROP (one address range)",
               "forward": "layer NETWORK_FORWARD, flags DROP",
               "guard": "layer NETWORK, divert to user space (exception packets only)"}


def render(plan: Plan, ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT, limits: tuple[str, ...] = LIMITS,
           fragments: bool = True) -> str:
    """The text `cordon rules --backend windivert` prints: the paths it leaves open
    (`limits`), each handle and its filter."""
    f = compile_plan(plan, ephemeral=ephemeral, fragments=fragments)
    lines = [f"# WinDivert filters, shape {f.shape}, {len(f.handles())} handles (plan digest {plan.digest()}, "
             f"mode {plan.mode}, local ephemeral ports {ephemeral[0]}-{ephemeral[1]})",
             *(f"# limit: {text}" for text in limits)]
    for name, text in f.handles():
        lines += [f"# handle {name}: {HANDLE_KIND[name.rstrip('0123456789')]}, {count_objects(text)} objects", text]
    return "\n".join(lines) + "\n"
