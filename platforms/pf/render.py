"""The pf anchor text, both ways. Pure: no pfctl, no I/O.

`render(plan)` turns a Plan into the text loaded with `pfctl -a com.apple/000.cordon -f -`.
`read_rules(listing, tables)` turns what `pfctl -a com.apple/000.cordon -sr` prints (pfctl's
normalised form: port lists expanded into one rule each, `port = https`, defaults such
as `flags S/SA keep state` spelled out) plus the table contents back into plan atoms,
so the backend can tell what is really in force.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from itertools import groupby

from platforms.plan import (DHCP_BROADCAST, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, Flow, Plan, PortRange,
                            atoms_digest, dhcp_servers_sorted)

# macOS's /etc/pf.conf evaluates `anchor "com.apple/*"`: the children of com.apple, one after
# the other in strcmp order of their names (pf keeps them in a red-black tree ordered by path;
# "/*" does not descend further), and a `quick` match in any of them ends the evaluation.
# Apple's children are numbered ("100.InternetSharing", "200.AirDrop",
# "250.ApplicationFirewall", ...): "000." sorts before all of them, so every packet meets
# Cordon's rules (all `quick`) before any Apple rule can pass or block it for good.
ANCHOR = "com.apple/000.cordon"
TABLE_PREFIX = "cordon_"
_PROTO_ORDER = {"tcp": 0, "udp": 1, "icmp": 2, "any": 3}
_DIR_ORDER = {"out": 0, "in": 1}

LOOPBACK_RULE = "pass quick on lo0 all no state"
BLOCK_RULE = "block drop quick all"


# ---------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Group:
    """Flows that share direction, protocol and ports: one table, one rule."""

    direction: str
    protocol: str
    ports: tuple[PortRange, ...]
    table: str
    networks: tuple[str, ...]
    names: tuple[str, ...]


def group_flows(flows) -> list[Group]:
    def key(f: Flow):
        return (_DIR_ORDER[f.direction], _PROTO_ORDER[f.protocol], tuple(sorted(set(f.ports))))

    groups = []
    for n, (k, members) in enumerate(groupby(sorted(flows, key=key), key=key), start=1):
        members = list(members)
        direction, protocol = members[0].direction, members[0].protocol
        nets = sorted({f.ip_network for f in members})
        names = sorted({f"{f.origin}: {_comment(f.name)}" if f.name else f.origin for f in members})
        groups.append(Group(direction, protocol, k[2], f"{TABLE_PREFIX}{direction}_{protocol}_{n}",
                            tuple(_host(n) for n in nets), tuple(names)))
    return groups


def render(plan: Plan | None) -> str:
    """The anchor text for `plan`; for None (state `normal`) the anchor is empty."""
    if plan is None:
        return f"# cordon: normal; anchor {ANCHOR} is empty (flushed with pfctl -a {ANCHOR} -F all)\n"
    groups = group_flows(plan.flows)
    out = [f"# cordon: isolated, mode {plan.mode}, policy version {plan.policy_version}, digest {plan.digest()}"]
    out += [f"# {line}" for line in plan.host_lines()]  # host exceptions: their current addresses
    out += [f"table <{g.table}> const {{ {', '.join(g.networks)} }}" for g in groups]
    out.append(LOOPBACK_RULE)
    if plan.dhcp:
        out.append("# DHCP: to the broadcast address or a leased server; pf cannot check the BOOTP shape or size")
        out += dhcp_rules(plan.dhcp_servers)
    for g in groups:
        out.append(f"# {'; '.join(g.names)}")
        out.append(rule_for(g))
    out.append(BLOCK_RULE)
    return "\n".join(out) + "\n"


def dhcp_rules(servers) -> list[str]:
    """DHCP only as DHCP (Plan): requests to the broadcast address or a leased server,
    replies to the broadcast address (never routed: from the link) or from a leased
    server. pf cannot look at the payload, so the BOOTP shape and size go unchecked."""
    c, s = DHCP_CLIENT_PORT, DHCP_SERVER_PORT
    out = [f"pass out quick inet proto udp from any port {c} to {DHCP_BROADCAST} port {s} keep state"]
    out += [f"pass out quick inet proto udp from any port {c} to {a} port {s} keep state" for a in servers]
    out.append(f"pass in quick inet proto udp from any port {s} to {DHCP_BROADCAST} port {c} keep state")
    out += [f"pass in quick inet proto udp from {a} port {s} to any port {c} keep state" for a in servers]
    return out


def rule_for(g: Group) -> str:
    proto = "" if g.protocol == "any" else f" proto {g.protocol}"
    ports = port_clause(g.ports)
    if g.direction == "out":
        hosts = f"from any to <{g.table}>{ports}"
    else:
        hosts = f"from <{g.table}> to any{ports}"
    # Only a SYN may create state for TCP, so an allowed rule never adopts a
    # connection that was open before isolation (that one is killed instead).
    state = "keep state" if g.protocol in ("udp", "icmp") else "flags S/SA keep state"
    return f"pass {g.direction} quick inet{proto} {hosts} {state}"


def port_clause(ports: tuple[PortRange, ...]) -> str:
    if not ports:
        return ""
    items = [str(p.first) if p.first == p.last else f"{p.first}:{p.last}" for p in ports]
    return f" port {items[0]}" if len(items) == 1 else f" port {{ {', '.join(items)} }}"


def _host(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


# ---------------------------------------------------------------- reading back

# Services pfctl prints by name (`port = https`): pfctl looks them up in the
# Mac's /etc/services; these are the fallbacks when this machine lacks one.
_SERVICE_FALLBACK = {"domain": 53, "bootps": 67, "bootpc": 68, "http": 80, "https": 443,
                     "ssh": 22, "ms-wbt-server": 3389, "telnet": 23, "ntp": 123}

_PORT = r"(?:= \S+|\d+:\d+)"
_RULE = re.compile(
    r"^pass (?P<dir>in|out) quick inet(?: proto (?P<proto>tcp|udp|icmp))?"
    rf" from (?P<src>\S+)(?: port (?P<sport>{_PORT}))?"
    rf" to (?P<dst>\S+)(?: port (?P<dport>{_PORT}))?"
    r"(?P<state>(?: flags S/SA)? keep state)$")


@dataclass
class ReadResult:
    atoms: set = field(default_factory=set)
    dhcp: bool = False
    dhcp_servers: tuple = ()
    loopback: bool = False
    block_last: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.loopback and self.block_last and not self.problems

    def digest(self) -> str | None:
        return atoms_digest(self.dhcp, self.atoms, self.dhcp_servers) if self.complete else None


def read_rules(listing: str, tables: dict[str, list[str]]) -> ReadResult:
    """Rebuild atoms from pfctl's normalised rule listing; anything Cordon does not
    render is a problem (the digest is then None: not what we installed)."""
    res = ReadResult()
    lines = [ln.strip() for ln in listing.splitlines() if ln.strip()]
    dhcp_seen: dict[tuple[str, str], int] = {}  # (direction, broadcast | server address) -> count
    for i, line in enumerate(lines):
        if line == LOOPBACK_RULE:
            res.loopback = True
        elif line == BLOCK_RULE:
            res.block_last = i == len(lines) - 1
            if not res.block_last:
                res.problems.append(f"rule after the final block: {lines[i + 1]!r}")
        elif _dhcp_rule(line):
            key = _dhcp_rule(line)
            dhcp_seen[key] = dhcp_seen.get(key, 0) + 1
        else:
            _read_pass(line, tables, res)
    _read_dhcp(dhcp_seen, res)
    return res


def _read_dhcp(seen: dict, res: ReadResult) -> None:
    """DHCP is on when both broadcast rules are there; its servers are those with a rule in
    each direction. Anything else (half a pair, a rule twice) is a problem."""
    res.dhcp = ("out", DHCP_BROADCAST) in seen and ("in", DHCP_BROADCAST) in seen
    peers = {peer for _, peer in seen}
    res.dhcp_servers = dhcp_servers_sorted(peers - {DHCP_BROADCAST})
    for peer in sorted(peers):
        if ("out", peer) not in seen or ("in", peer) not in seen:
            res.problems.append(f"only half of the DHCP rules for {peer} present")
    if any(n > 1 for n in seen.values()):
        res.problems.append("a DHCP rule is there twice")
    if res.dhcp_servers and not res.dhcp:
        res.problems.append("DHCP server rules without the broadcast rules")


def _dhcp_rule(line: str) -> tuple[str, str] | None:
    """(direction, peer) when `line` is one of the DHCP rules as pfctl prints them: peer
    is the broadcast address or a server's address."""
    m = _RULE.match(line)
    if not (m and m["proto"] == "udp" and m["sport"] and m["dport"] and m["state"] == " keep state"):
        return None
    if m["dir"] == "out" and m["src"] == "any" and _unicast_or_broadcast(m["dst"]):
        peer = m["dst"]
    elif m["dir"] == "in" and m["src"] == "any" and m["dst"] == DHCP_BROADCAST:
        peer = DHCP_BROADCAST
    elif m["dir"] == "in" and m["dst"] == "any" and _unicast_or_broadcast(m["src"]) and m["src"] != DHCP_BROADCAST:
        peer = m["src"]
    else:
        return None
    try:
        ports = (_range(m["sport"], "udp"), _range(m["dport"], "udp"))
    except ValueError:
        return None
    client, server = (DHCP_CLIENT_PORT,) * 2, (DHCP_SERVER_PORT,) * 2
    if m["dir"] == "out" and ports == (client, server):
        return "out", peer
    if m["dir"] == "in" and ports == (server, client):
        return "in", peer
    return None


def _unicast_or_broadcast(text: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        return False


def _read_pass(line: str, tables: dict[str, list[str]], res: ReadResult) -> None:
    m = _RULE.match(line)
    if not m or m["sport"]:
        res.problems.append(f"unexpected rule: {line!r}")
        return
    direction, proto = m["dir"], m["proto"] or "any"
    peer, local = (m["dst"], m["src"]) if direction == "out" else (m["src"], m["dst"])
    if local != "any" or not (peer.startswith("<") and peer.endswith(">")):
        res.problems.append(f"unexpected addresses: {line!r}")
        return
    want_state = " keep state" if proto in ("udp", "icmp") else " flags S/SA keep state"
    if m["state"] != want_state:
        res.problems.append(f"unexpected state options: {line!r}")
        return
    name = peer[1:-1]
    if name not in tables:
        res.problems.append(f"table <{name}> missing")
        return
    try:
        first, last = _range(m["dport"], proto) if m["dport"] else (0, 0)
    except ValueError as exc:
        res.problems.append(f"{exc}: {line!r}")
        return
    for addr in tables[name]:
        try:
            net = ipaddress.ip_network(addr, strict=True)
        except ValueError:
            res.problems.append(f"unexpected entry {addr!r} in table <{name}>")
            continue
        res.atoms.add((direction, proto, str(net), first, last))


def _range(text: str, proto: str) -> tuple[int, int]:
    if text.startswith("= "):
        p = _port(text[2:], proto)
        return p, p
    a, b = text.split(":")
    return int(a), int(b)


def _port(text: str, proto: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return socket.getservbyname(text, proto)
    except OSError:
        if text in _SERVICE_FALLBACK:
            return _SERVICE_FALLBACK[text]
        raise ValueError(f"unknown service name {text!r}") from None


def parse_table_show(text: str) -> list[str]:
    """`pfctl -t NAME -T show` prints one address or network per line, indented."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]
