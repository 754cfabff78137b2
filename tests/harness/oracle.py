"""The ONE independent oracle: what DESIGN §1 lets through while isolated, computed with
`ipaddress` alone. It never imports agent.* or platforms.*: a bug there cannot hide here.
Plans are read duck-typed (flow.direction / protocol / network / ports[first, last]).

- IPv6 never passes; nothing forwarded through the endpoint passes.
- A rule lets the endpoint open ("out") or a peer open ("in") a flow to the rule's
  network and ports; replies of an allowed flow pass, nothing stateless.
- DHCP only as DHCP: the client port 68 to server port 67 at the broadcast address or a
  server that leased the endpoint's address. Never inbound first.

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


def dhcp_allows(direction: str, proto: str, peer: str, port, sport, servers=()) -> bool:
    if proto != "udp" or direction != "out" or peer not in (BROADCAST, *servers):
        return False  # a server's answer is a reply of the exchange, never a new flow
    return (sport, port) == (DHCP_CLIENT, DHCP_SERVER)


def allows(rules, direction: str, proto: str, peer: str, port=None, sport=None,
           dhcp: bool = False, dhcp_servers=()) -> bool:
    """May a NEW flow pass while isolated? direction "out": the endpoint opens it to `peer`
    on `port` from `sport`; "in": `peer` opens it to the endpoint's `port` from `sport`."""
    if ipaddress.ip_address(peer).version == 6:
        return False
    if dhcp and dhcp_allows(direction, proto, peer, port, sport, dhcp_servers):
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
    ok = allows(rules, direction, p.proto, peer, p.port, p.sport, dhcp, dhcp_servers)
    return ALLOWED if ok else BLOCKED


def plan_verdict(lab, plan, p, dhcp_servers=()) -> str:
    """The verdict a plan means for a probe; `plan` None = not isolated: all passes."""
    if plan is None:
        return ALLOWED
    return probe_verdict(lab, plan_rules(plan), p, plan.dhcp, dhcp_servers)
