"""The EXPECTED reachability, computed from the agent config (TOML), the policy (JSON)
and the state, straight from DESIGN §1 with `ipaddress` — deliberately without importing
anything of the product (agent.*, platforms.*), so a bug there cannot hide in here.

- normal: everything passes.
- isolated: the endpoint may open connections to the vendor endpoints and to the DNS
  resolvers (udp+tcp 53); in `standard` mode also the active exceptions of the enforced
  policy when it is enabled (outbound: endpoint opens; inbound: the peer opens, to the
  endpoint's local ports). Replies pass. All else is dropped: IPv6 entirely, and
  everything forwarded through the endpoint (exceptions are for the host, not a router).
- DHCP (config `vendor.dhcp`, default true) is DHCP only: the endpoint's client port 68
  to server port 67 at the broadcast address or the server that leased its address, and
  that server's replies (67 -> 68). Not to or from any other address, never inbound
  first, none at all with dhcp = false. No lab host leased the endpoint's address, so
  no lab host gets a DHCP allowance.
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field

from .oracle import BROADCAST, DHCP_CLIENT, DHCP_SERVER, Rule, dhcp_allows, probe_verdict, protos  # noqa: F401 (re-exported)
from .matrix import matrix
from .probe import ALLOWED, Probe

UNMENTIONED_CANDIDATES = (9, 8080, 2222, 4444, 31337)


def parse_ports(value) -> tuple:
    """"any" -> (); "22, 3389, 5000-5010" or [22, "5000-5010"] -> ((22, 22), ...)."""
    if isinstance(value, int):
        value = [value]
    if isinstance(value, str):
        if value.strip().lower() == "any":
            return ()
        value = value.split(",")
    out = []
    for item in value:
        a, _, b = str(item).strip().partition("-")
        out.append((int(a), int(b or a)))
    return tuple(out)


def _rule(direction: str, entry: dict, origin: str) -> Rule:
    ports = parse_ports(entry.get("ports", "any"))
    proto = entry.get("protocol", "tcp" if origin == "vendor" else "any")
    return Rule(direction, protos(proto, ports), ipaddress.IPv4Network(entry["address"]), ports, origin)


def config_rules(config: dict) -> list[Rule]:
    vendor = config.get("vendor", {})
    rules = [_rule("out", e, "vendor") for e in vendor.get("endpoints", [])]
    for server in vendor.get("dns_servers", []):
        rules.append(Rule("out", frozenset({"udp", "tcp"}), ipaddress.IPv4Network(server),
                          ((53, 53),), "dns"))
    return rules


def policy_rules(policy: dict | None, everything: bool = False) -> list[Rule]:
    """The exceptions a policy enforces (or, with everything=True, all it mentions)."""
    if not policy or not (everything or policy.get("enabled", False)):
        return []
    return [_rule(direction, e, "exception")
            for key, direction in (("outbound", "out"), ("inbound", "in"))
            for e in policy.get(key, []) if everything or e.get("active", True)]


def load_config(path: str) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


@dataclass
class Model:
    """What should be in force, following the state rules of DESIGN §1 (sensor types)."""

    config: dict
    state: str = "normal"                 # normal | isolated
    mode: str | None = None               # None | standard | strict
    stored: dict | None = None            # the newest accepted policy
    enforced: dict | None = None          # the policy whose exceptions are in force
    history: list = field(default_factory=list)
    dhcp_servers: tuple = ()              # servers that leased the endpoint's address

    @property
    def dhcp(self) -> bool:
        return self.config.get("vendor", {}).get("dhcp", True)

    def dhcp_allows(self, direction: str, proto: str, peer: str, port, sport) -> bool:
        return self.dhcp and dhcp_allows(direction, proto, peer, port, sport, self.dhcp_servers)

    @property
    def sensor_type(self) -> str:
        return self.config.get("sensor_type", "endpoint_sensor")

    def policy_set(self, doc: dict) -> None:
        doc = dict(doc)
        if "version" not in doc:
            doc["version"] = (self.stored or {}).get("version", 0) + 1
        self.stored = doc
        if self.state == "isolated" and self.sensor_type == "endpoint_sensor":
            self.enforced = doc
        self.history.append(("policy_set", doc["version"]))

    def isolate(self, strict: bool = False) -> None:
        self.state, self.mode, self.enforced = "isolated", "strict" if strict else "standard", self.stored
        self.history.append(("isolate", self.mode))

    def release(self) -> None:
        self.state, self.mode, self.enforced = "normal", None, None
        self.history.append(("release", None))

    def rules(self) -> list[Rule]:
        if self.state != "isolated":
            return []
        return config_rules(self.config) + (policy_rules(self.enforced) if self.mode == "standard" else [])

    def verdict(self, lab, p: Probe) -> str:
        if self.state != "isolated":
            return ALLOWED
        return probe_verdict(lab, self.rules(), p, self.dhcp, self.dhcp_servers)

    def expected(self, lab, probes) -> dict[Probe, str]:
        return {p: self.verdict(lab, p) for p in probes}


def _mentioned_rules(config: dict, policies) -> list[Rule]:
    return config_rules(config) + [r for d in policies for r in policy_rules(d, everything=True)]


def _unmentioned(rules) -> list[int]:
    return [c for c in UNMENTIONED_CANDIDATES
            if not any(a <= c <= b for r in rules for a, b in r.ports)]


def mentioned_ports(config: dict, policies=()) -> list[int]:
    """Ports the documents name (range ends and one past the end), plus two they don't."""
    rules = _mentioned_rules(config, policies)
    ports: set[int] = set()
    for r in rules:
        for a, b in r.ports:
            ports |= {a, b} | ({b + 1} if a < b < 65535 else set())
    return sorted(ports | set(_unmentioned(rules)[:2]))


def probe_set(lab, config: dict, policies=(), families=(4, 6), skip_ports=()) -> list[Probe]:
    """endpoint -> each host and each host -> endpoint, tcp/udp on the mentioned ports and
    icmp, both families; a source-port trick from peers that the endpoint may reach on a
    port; and behind -> outside (the forward path). `skip_ports`: ports a lab service
    (the console's broker) holds, so no responder can listen there; never probed."""
    rules = _mentioned_rules(config, policies)
    ports = mentioned_ports(config, policies)
    services = [(proto, port) for proto in ("tcp", "udp") for port in ports] + [("icmp", None)]
    peers = [h for h, spec in lab.hosts.items() if spec.attach == "router" and h != "endpoint"]
    forward = []
    if "behind" in lab.hosts and "outside" in lab.hosts:
        forward = [("behind", "outside", proto, port) for proto, port in
                   (("tcp", ports[0]), ("udp", ports[0]), ("icmp", None))]
    # "An outbound flow never lets the peer connect in", also from the allowed port.
    dport = _unmentioned(rules)[0]
    from_allowed_port = []
    for r in rules:
        if r.direction != "out" or not r.ports:
            continue
        for peer in peers:
            if ipaddress.ip_address(lab.addr(peer, 4)) in r.network:
                for proto in sorted(r.protos - {"icmp"}):
                    from_allowed_port.append(Probe(peer, "endpoint", proto, dport, 4, sport=r.ports[0][0]))
    skip = set(skip_ports)
    return [p for p in matrix(peers, services, families, forward=forward, extra=from_allowed_port)
            if p.port not in skip and p.sport not in skip]
