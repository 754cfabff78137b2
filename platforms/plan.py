"""The plan: a platform-neutral, immutable description of what isolation allows.

A backend renders a Plan and nothing else; it never sees a policy or a command.

Every `Flow` describes connections by their *original* direction:
- direction "out": the host opens the connection to `network` on destination `ports`;
- direction "in":  a peer in `network` opens the connection to the host's local `ports`.
Replies to an allowed flow pass; nothing else does (no stateless reply shortcuts).
"""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

Direction = Literal["out", "in"]
Protocol = Literal["tcp", "udp", "icmp", "any"]
Origin = Literal["vendor", "dns", "exception"]
Mode = Literal["standard", "strict"]

DNS_PORT = 53
DHCP_CLIENT_PORT = 68
DHCP_SERVER_PORT = 67
DHCP_BROADCAST = "255.255.255.255"
MAX_DHCP_SERVERS = 4


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __post_init__(self) -> None:
        if not (1 <= self.first <= self.last <= 65535):
            raise ValueError(f"bad port range {self.first}-{self.last}")

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@functools.lru_cache(maxsize=65536)
def _parse_network(text: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(text)  # type: ignore[return-value]


@dataclass(frozen=True, order=True)
class Flow:
    """One allowed kind of connection. `ports == ()` means any port.

    `protocol` is "any" only together with any port; a port list with protocol
    "any" is compiled into one tcp and one udp flow, so backends never see it.
    """

    direction: Direction
    protocol: Protocol
    network: str  # IPv4 network in CIDR form, e.g. "203.0.113.5/32"
    ports: tuple[PortRange, ...] = ()
    origin: Origin = "exception"
    name: str = ""
    host: str = ""   # the DNS name this flow's address was resolved from (DESIGN §11), or ""
    # When the flow stops (seconds since the epoch): its exception's expires_at or the
    # TTL of the DNS answer behind it, whichever is first; None = while the plan holds.
    # Backends with kernel timeouts install it there, so it lapses even if the agent dies.
    expires: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.network)  # raises on nonsense
        if self.protocol in ("icmp", "any") and self.ports:
            raise ValueError(f"{self.protocol} flow cannot carry ports")
        # Kept from the parse above for renderers: re-parsing 20,000 networks in the
        # apply path cost a 10,000-exception isolation 12 ms.
        object.__setattr__(self, "_range", (int(net.network_address), int(net.broadcast_address)))

    @property
    def addr_range(self) -> tuple[int, int]:
        """First and last address of `network`, as integers."""
        return self._range

    @property
    def ip_network(self) -> ipaddress.IPv4Network:
        return _parse_network(self.network)


@dataclass(frozen=True)
class HostAddresses:
    """What one DNS name of a host exception resolved to, as the agent last saw it:
    at most 16 IPv4 addresses valid until `expires`, or `error` and no addresses."""

    host: str
    addresses: tuple[str, ...] = ()
    expires: float | None = None
    error: str | None = None
    ttl: int | None = None


@dataclass(frozen=True)
class Plan:
    """What is allowed while isolated. Loopback is always allowed; all else is dropped,
    IPv4 and IPv6, on the input, output and forward paths.

    DHCP (when `dhcp`) is DHCP only, and not a flow: UDP client port 68 -> server port 67
    to the limited broadcast address or a server in `dhcp_servers` (the servers that
    leased the host its addresses); server port 67 -> client port 68 from such a server,
    or to the broadcast address (which no router forwards, so it comes from the link);
    sized and shaped like BOOTP where the platform can look (size, op, magic cookie).
    `dhcp_servers` is empty when `dhcp` is false: nothing on those ports passes then."""

    mode: Mode
    flows: tuple[Flow, ...]
    dhcp: bool = True
    policy_version: int | None = None  # the policy whose exceptions are in this plan
    hosts: tuple[HostAddresses, ...] = ()  # the host exceptions' names, for display
    dhcp_servers: tuple[str, ...] = ()  # IPv4 addresses, sorted, unique, at most MAX_DHCP_SERVERS

    def __post_init__(self) -> None:
        servers = self.dhcp_servers
        if servers and not self.dhcp:
            raise ValueError("dhcp_servers: given although dhcp is off")
        if len(servers) > MAX_DHCP_SERVERS:
            raise ValueError(f"dhcp_servers: {len(servers)} servers, at most {MAX_DHCP_SERVERS}")
        if list(servers) != sorted(set(servers), key=_dhcp_key):
            raise ValueError(f"dhcp_servers: {servers} not sorted and unique")
        for s in servers:
            check_dhcp_server(s)

    def by_origin(self, origin: Origin) -> tuple[Flow, ...]:
        return tuple(f for f in self.flows if f.origin == origin)

    def allows(self, protocol: str, remote, local_port: int | None, remote_port: int | None,
               direction: Direction | None = None) -> bool:
        """Does a flow of this plan allow the connection `protocol` between the host's
        `local_port` and `remote` (an IPv4 address object) port `remote_port`? With
        `direction` (who opened it) only flows of that direction count, else either.
        Loopback and DHCP are the caller's business: they are not flows."""
        for f in self.flows:
            if direction is not None and f.direction != direction:
                continue
            if f.protocol not in ("any", protocol) or remote not in f.ip_network:
                continue
            port = remote_port if f.direction == "out" else local_port
            if not f.ports or any(r.first <= (port or 0) <= r.last for r in f.ports):
                return True
        return False

    def dhcp_sends_to(self, local_port: int | None, remote: str, remote_port: int | None) -> bool:
        """May the host's DHCP client (`local_port` 68) talk with `remote` on server port
        67? Only the broadcast address or a leased server, and only with dhcp on."""
        return self.dhcp and (local_port, remote_port) == (DHCP_CLIENT_PORT, DHCP_SERVER_PORT) \
            and remote in (DHCP_BROADCAST, *self.dhcp_servers)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        """Inverse of to_json (for processes that receive a plan, e.g. test helpers)."""
        flows = tuple(Flow(f["direction"], f["protocol"], f["network"],
                           tuple(PortRange(p["first"], p["last"]) for p in f["ports"]),
                           f["origin"], f["name"], f.get("host", ""), f.get("expires")) for f in d["flows"])
        hosts = tuple(HostAddresses(h["host"], tuple(h["addresses"]), h["expires"], h["error"], h.get("ttl"))
                      for h in d.get("hosts", ()))
        return cls(d["mode"], flows, d["dhcp"], d["policy_version"], hosts, tuple(d.get("dhcp_servers", ())))

    def host_lines(self) -> list[str]:
        """'host NAME -> addresses (until TIME, TTL N s)' per host exception, for the
        text a backend renders (`cordon rules`)."""
        out = []
        for h in self.hosts:
            if h.error or h.expires is None:
                out.append(f"host {h.host} -> nothing ({h.error or 'not resolved'})")
            else:
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.expires))
                out.append(f"host {h.host} -> {', '.join(h.addresses)} (until {until}, TTL {h.ttl} s)")
        return out

    def next_expiry(self) -> float | None:
        times = [f.expires for f in self.flows if f.expires is not None]
        return min(times) if times else None

    def lapsed(self, at: float) -> "Plan":
        """This plan as it stands at time `at`: the flows that expire by then removed."""
        return replace(self, flows=tuple(f for f in self.flows if f.expires is None or f.expires > at))

    def atoms(self) -> frozenset[tuple[str, str, str, int, int]]:
        """What the plan allows, as (direction, protocol, network, first, last) atoms;
        any port is (0, 0). Independent of how flows are split or named."""
        return flow_atoms(self.flows)

    def digest(self) -> str:
        """A short fingerprint of what the plan allows (names and version excluded),
        so that a backend's read-back can be compared with the plan."""
        return atoms_digest(self.dhcp, self.atoms(), self.dhcp_servers)


def check_dhcp_server(text: str) -> ipaddress.IPv4Address:
    """A DHCP server address a plan may carry: one unicast IPv4 address in canonical
    dotted-quad form (not 0/8, loopback, link-local, multicast, reserved or broadcast)."""
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"dhcp_servers: {text!r} is not an IPv4 address") from None
    if str(addr) != text or addr.is_loopback or addr.is_multicast or addr.is_reserved \
            or addr.is_link_local or addr.is_unspecified or int(addr) >> 24 == 0:
        raise ValueError(f"dhcp_servers: {text!r} is not a unicast IPv4 address")
    return addr


def _dhcp_key(text: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        return -1


def dhcp_servers_sorted(addresses) -> tuple[str, ...]:
    """Addresses as a plan carries them: unique, sorted by value."""
    return tuple(sorted(set(addresses), key=_dhcp_key))


def flow_atoms(flows) -> frozenset[tuple[str, str, str, int, int]]:
    out = set()
    for f in flows:
        for p in f.ports or (None,):
            out.add((f.direction, f.protocol, f.network, p.first if p else 0, p.last if p else 0))
    return frozenset(out)


def atoms_digest(dhcp: bool, atoms, dhcp_servers=()) -> str:
    doc = {"dhcp": dhcp, "atoms": sorted(atoms)}
    if dhcp_servers:  # so that a plan without leased servers keeps its digest
        doc["dhcp_servers"] = sorted(dhcp_servers, key=_dhcp_key)
    body = json.dumps(doc, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]
