"""The ONE independent oracle: what DESIGN §1 lets through while isolated, computed with
`ipaddress` alone. It never imports agent.* or platforms.*: a bug there cannot hide here.
Plans are read duck-typed (flow.direction / protocol / network / ports[first, last]).

- IPv6 never passes; nothing forwarded through the endpoint passes.
- A rule lets the endpoint open ("out") or a peer open ("in") a flow to the rule's
  network and ports; replies of an allowed flow pass, nothing stateless.
- DHCP only as DHCP, and only BOOTP-shaped (a UDP length 248-1480, the BOOTP op of its
  direction, the magic cookie): the endpoint's client port 68 to server port 67 at the
  limited broadcast address or a server that leased the endpoint's address; server port
  67 to the endpoint's port 68 from such a server, or to the limited broadcast address
  (which no router forwards, so only the link can send it). Nothing else on 67/68: not
  to or from other hosts, not the endpoint as a server, not a plain datagram (a harness
  Probe carries a nonce, never a BOOTP message, so no Probe is DHCP). dhcp = false: none.

Used by tests.harness.expect (Model), tests.integration.nft_plans, the nftables matrix,
the WinDivert matrix and the pf unit tests."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

ALLOWED, BLOCKED = "ALLOWED", "BLOCKED"  # the same strings as tests.harness.probe
DHCP_CLIENT, DHCP_SERVER = 68, 67
BROADCAST = "255.255.255.255"


@dataclass(frozen=True)
class Rule:
    direction: str                      # "out": endpoint opens; "in": peer opens
    protos: frozenset                   # subset of {"tcp", "udp", "icmp"}
    network: ipaddress.IPv4Network
    ports: tuple = ()                   # ((first, last), ...); () = any port
    origin: str = ""

    def allows(self, direction: str, proto: str, peer: str, port: int | None) -> bool:
        if direction != self.direction or proto not in self.protos:
            return False
        if ipaddress.ip_address(peer) not in self.network:
            return False
        return proto == "icmp" or not self.ports or (
            port is not None and any(a <= port <= b for a, b in self.ports))


def protos(protocol: str, ports: tuple) -> frozenset:
    if protocol == "any":  # with a port list only TCP and UDP can match
        return frozenset({"tcp", "udp"} if ports else {"tcp", "udp", "icmp"})
    return frozenset({protocol})


def plan_rules(plan) -> list[Rule]:
    """A plan's flows as rules (read field by field, not through the plan's own methods)."""
    out = []
    for f in plan.flows:
        ports = tuple((r.first, r.last) for r in f.ports)
        out.append(Rule(f.direction, protos(f.protocol, ports), ipaddress.IPv4Network(f.network),
                        ports, getattr(f, "origin", "")))
    return out


def dhcp_allows(direction: str, proto: str, peer: str, port, sport, servers=(), local: str | None = None,
                shaped: bool = True) -> bool:
    """Is this a DHCP packet the contract lets through? direction "out": the endpoint sends
    from `sport` to `peer`:`port`; "in": `peer` sends from `sport` to the endpoint's
    address `local` (None: its own unicast address) on `port`. `shaped`: the payload is a
    BOOTP message of that direction (request out, reply in) of a DHCP size."""
    if proto != "udp" or not shaped:
        return False
    if direction == "out":
        return (sport, port) == (DHCP_CLIENT, DHCP_SERVER) and peer in (BROADCAST, *servers)
    return (sport, port) == (DHCP_SERVER, DHCP_CLIENT) and (peer in servers or local == BROADCAST)


def bootp_shaped(payload: bytes, op: int) -> bool:
    """A BOOTP message of operation `op` (1 request, 2 reply) of a DHCP size, read from the
    bytes (RFC 951/2131: op at 0, the magic cookie 99.130.83.99 at 236; the UDP length is
    the payload plus its 8-byte header: at least the 240 fixed bytes, at most one
    1500-byte MTU less the IPv4 and UDP headers)."""
    return 240 <= len(payload) <= 1480 - 8 and payload[0] == op and payload[236:240] == bytes([99, 130, 83, 99])


def allows(rules, direction: str, proto: str, peer: str, port=None, sport=None,
           dhcp: bool = False, dhcp_servers=(), dhcp_shaped: bool = True) -> bool:
    """May a NEW flow pass while isolated? direction "out": the endpoint opens it to `peer`
    on `port` from `sport`; "in": `peer` opens it to the endpoint's `port` from `sport`.
    `dhcp_shaped`: whether the packet is a BOOTP message (see dhcp_allows)."""
    if ipaddress.ip_address(peer).version == 6:
        return False
    if dhcp and dhcp_allows(direction, proto, peer, port, sport, dhcp_servers, shaped=dhcp_shaped):
        return True
    return any(r.allows(direction, proto, peer, port) for r in rules)


def probe_verdict(lab, rules, p, dhcp: bool = False, dhcp_servers=()) -> str:
    """The verdict for a harness Probe while isolated under `rules`."""
    if p.family == 6:
        return BLOCKED
    if p.src == "endpoint":
        direction, peer = "out", lab.addr(p.dst, 4)
    elif p.dst == "endpoint":
        direction, peer = "in", lab.addr(p.src, 4)
    else:
        return BLOCKED  # forwarded through the endpoint
    # a Probe's payload is a nonce, never a BOOTP message: DHCP's allowance never applies
    ok = allows(rules, direction, p.proto, peer, p.port, p.sport, dhcp, dhcp_servers, dhcp_shaped=False)
    return ALLOWED if ok else BLOCKED


def plan_verdict(lab, plan, p) -> str:
    """The verdict a plan means for a probe; `plan` None = not isolated: all passes."""
    if plan is None:
        return ALLOWED
    return probe_verdict(lab, plan_rules(plan), p, plan.dhcp, plan_dhcp_servers(plan))


def plan_dhcp_servers(plan) -> tuple:
    """The leased DHCP servers a plan names (read as given; none when DHCP is off)."""
    return tuple(getattr(plan, "dhcp_servers", ())) if plan.dhcp else ()
