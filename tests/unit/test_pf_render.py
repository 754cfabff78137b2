"""pf anchor text: golden files, the catalogue of every rule shape, determinism, and
what the loaded text really allows (checked with the fake pfctl's own evaluator
against expectations computed here from the plan)."""
from __future__ import annotations

import ipaddress
import random
import re
from pathlib import Path

import pytest

from platforms.plan import Flow, Plan, PortRange
from platforms.pf import PfBackend
from platforms.pf.render import ANCHOR, read_rules, render
from tests.golden import check_golden
from tests.harness import oracle
from tests.unit.fake_pfctl import FakePfctl, parse_ruleset

GOLDEN = Path(__file__).parent / "golden" / "pf"
P = PortRange


def vendor_flows() -> tuple[Flow, ...]:
    return (Flow("out", "tcp", "198.51.100.10/32", (P(443, 443),), "vendor", "Vendor cloud"),
            Flow("out", "tcp", "198.51.100.11/32", (P(443, 443),), "vendor", "Vendor cloud"))


def dns_flows(resolvers=("192.0.2.53/32",)) -> tuple[Flow, ...]:
    return tuple(Flow("out", proto, r, (P(53, 53),), "dns") for r in resolvers for proto in ("udp", "tcp"))


def one_exception() -> tuple[Flow, ...]:
    return (Flow("in", "tcp", "203.0.113.5/32", (P(3389, 3389),), "exception", "Jump host RDP"),)


_PORT_SHAPES = [(P(443, 443),), (P(22, 22), P(3389, 3389)), (P(5000, 5010),),
                (P(8080, 8080), P(9000, 9100)), ()]


def fifty_fifty() -> tuple[Flow, ...]:
    """50 inbound + 50 outbound exceptions: port lists, ranges, CIDRs, every protocol."""
    flows = []
    for direction in ("out", "in"):
        for i in range(50):
            proto = ("tcp", "udp", "icmp", "any", "tcp")[i % 5]
            ports = () if proto in ("icmp", "any") else _PORT_SHAPES[i % 4]
            base = 1 if direction == "out" else 101
            net = f"198.51.100.{(i % 8) * 16}/28" if i % 7 == 0 else f"203.0.113.{base + i}/32"
            flows.append(Flow(direction, proto, net, ports, "exception", f"{direction} exception {i}"))
    return tuple(flows)


LEASED = ("192.0.2.1",)  # the DHCP server of the host's lease, where a plan has one


def plan_for(name: str) -> Plan | None:
    base = vendor_flows() + dns_flows()
    return {
        "normal": None,
        "standard_0": Plan("standard", base, True, 1),
        "standard_1": Plan("standard", base + one_exception(), True, 2, dhcp_servers=LEASED),
        "standard_50_50": Plan("standard", base + fifty_fifty(), True, 3, dhcp_servers=LEASED),
        "strict": Plan("strict", base, True, 3),
        "no_dns_no_dhcp": Plan("standard", vendor_flows() + one_exception(), False, 2),
        "dns_two_resolvers_no_dhcp": Plan("standard", vendor_flows() + dns_flows(
            ("192.0.2.53/32", "192.0.2.54/32")), False, 1),
    }[name]


GOLDEN_NAMES = ["normal", "standard_0", "standard_1", "standard_50_50", "strict",
                "no_dns_no_dhcp", "dns_two_resolvers_no_dhcp"]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden(name, update_golden):
    check_golden(GOLDEN / f"{name}.conf", render(plan_for(name)), update_golden)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_files_parse_with_the_pf_conf_grammar(name):
    _, errors = parse_ruleset((GOLDEN / f"{name}.conf").read_text(), main=False)
    assert errors == []


def test_output_does_not_depend_on_flow_order():
    plan = plan_for("standard_50_50")
    flows = list(plan.flows)
    random.Random(7).shuffle(flows)
    assert render(Plan(plan.mode, tuple(flows), plan.dhcp, plan.policy_version,
                       dhcp_servers=plan.dhcp_servers)) == render(plan)


def test_backend_render_is_the_module_render():
    plan = plan_for("standard_1")
    assert PfBackend(None).render(plan) == render(plan)


# --------------------------------------------------------------- rule shapes
# Every line the renderer can produce, with the pf.conf(5) grammar it relies on
# (quotes from the pf.conf(5) manual shipped with macOS / OpenBSD 4.x; section in
# capitals). A reviewer with a Mac can paste GOLDEN/*.conf into
# `sudo pfctl -a com.apple/cordon-review -n -f FILE` to check them in one sitting.
SHAPES = [
    (r"# .*",
     'STATEMENT ORDER: "Comments can be put anywhere in the file using a hash mark (#), and extend '
     'to the end of the current line."'),
    (r"table <cordon_(out|in)_(tcp|udp|icmp|any)_\d+> const \{ [0-9./]+(, [0-9./]+)* \}",
     'TABLES: "table <name> const { ... }"; "const: The const flag prevents the user from altering '
     'the contents of the table once it has been created."'),
    (r"pass quick on lo0 all no state",
     'PARAMETERS: "on <interface>: This rule applies only to packets coming in on, or going out '
     'through, this particular interface"; "all: This is equivalent to from any to any"; '
     'STATEFUL TRACKING OPTIONS: "no state" (pass without creating state).'),
    (r"pass out quick inet proto udp from any port 68 to 255\.255\.255\.255 port 67 keep state",
     'PARAMETERS: "from <source> port <source> to <dest> port <dest>"; a host is "A single IP '
     'address"; "port 68": unary "=" is the default operator; "keep state". DHCP requests to the '
     'limited broadcast address.'),
    (r"pass out quick inet proto udp from any port 68 to \d+\.\d+\.\d+\.\d+ port 67 keep state",
     "as above, to a leased DHCP server (renewals)."),
    (r"pass in quick inet proto udp from any port 67 to 255\.255\.255\.255 port 68 keep state",
     "inbound DHCP replies sent to the limited broadcast address (never routed: from the link)."),
    (r"pass in quick inet proto udp from \d+\.\d+\.\d+\.\d+ port 67 to any port 68 keep state",
     "inbound DHCP replies from a leased server."),
    (r"pass out quick inet proto (tcp|udp) from any to <cordon_out_(tcp|udp)_\d+>"
     r" port (\d+|\d+:\d+|\{ (\d+|\d+:\d+)(, (\d+|\d+:\d+))* \})( flags S/SA)? keep state",
     'PARAMETERS: "quick: If a packet matches a rule which has the quick option set, this rule is '
     'considered the last matching rule"; "inet"; "proto <protocol>"; "<table>" as a host; '
     '"Ports and ranges of ports are specified by using these operators: = ... : (range including '
     'boundaries)"; LISTS: "{ ... }"; "flags S/SA" only on tcp rules; "keep state".'),
    (r"pass out quick inet proto tcp from any to <cordon_out_tcp_\d+> flags S/SA keep state",
     "outbound tcp, any port (no port clause)."),
    (r"pass out quick inet proto udp from any to <cordon_out_udp_\d+> keep state",
     "outbound udp, any port."),
    (r"pass out quick inet proto icmp from any to <cordon_out_icmp_\d+> keep state",
     'PARAMETERS: "proto icmp" with "inet" (icmp is an IPv4 protocol); no ports.'),
    (r"pass out quick inet from any to <cordon_out_any_\d+> flags S/SA keep state",
     'no "proto": every protocol; "flags S/SA" applies to TCP packets only.'),
    (r"pass in quick inet proto (tcp|udp) from <cordon_in_(tcp|udp)_\d+> to any"
     r"( port (\d+|\d+:\d+|\{ (\d+|\d+:\d+)(, (\d+|\d+:\d+))* \}))?( flags S/SA)? keep state",
     'inbound: "from <table> to any port <local ports>" - the local ports are the destination '
     'ports of the peer\'s packets; "flags S/SA": only a SYN creates state.'),
    (r"pass in quick inet proto icmp from <cordon_in_icmp_\d+> to any keep state", "inbound icmp."),
    (r"pass in quick inet from <cordon_in_any_\d+> to any flags S/SA keep state", "inbound, any protocol."),
    (r"block drop quick all",
     'PARAMETERS: "block drop: Drop packet silently"; no "inet"/"inet6": both address families; '
     '"quick" + "all": nothing after it is evaluated.'),
]


def _shape_of(line: str) -> int:
    hits = [i for i, (rx, _) in enumerate(SHAPES) if re.fullmatch(rx, line)]
    assert len(hits) >= 1, f"line matches no catalogued shape: {line!r}"
    return hits[0]


def test_every_rendered_line_has_a_catalogued_shape_and_every_shape_is_produced():
    seen = set()
    extra = Plan("standard", (
        Flow("out", "tcp", "203.0.113.9/32", (), "exception"), Flow("out", "udp", "203.0.113.9/32", ()),
        Flow("in", "icmp", "203.0.113.9/32"), Flow("in", "any", "203.0.113.9/32"),
        Flow("in", "udp", "203.0.113.9/32", (P(161, 161),))), True, 1)
    for name in GOLDEN_NAMES:
        for line in render(plan_for(name)).splitlines():
            seen.add(_shape_of(line))
    for line in render(extra).splitlines():
        seen.add(_shape_of(line))
    assert seen == set(range(len(SHAPES))), [SHAPES[i][0] for i in set(range(len(SHAPES))) - seen]


# --------------------------------------------------------------- what the loaded anchor allows

def expected(plan: Plan, direction: str, proto: str, remote: str, remote_port, local_port, local=None) -> str:
    """The contract (DESIGN.md 1) from the harness's one oracle, not from pf text: DHCP to
    the broadcast address or the plan's leased server. pf cannot see the payload, so
    every probe here counts as BOOTP-shaped (a named limit of pf: size and shape unchecked)."""
    port, sport = (remote_port, local_port) if direction == "out" else (local_port, remote_port)
    if direction == "in" and local is not None and proto == "udp":
        if plan.dhcp and oracle.dhcp_allows("in", proto, remote, port, sport, oracle.plan_dhcp_servers(plan), local):
            return "pass"
        return "block"  # nothing else is ever sent to the broadcast address
    ok = oracle.allows(oracle.plan_rules(plan), direction, proto, remote, port, sport, dhcp=plan.dhcp,
                       dhcp_servers=oracle.plan_dhcp_servers(plan))
    return "pass" if ok else "block"


def probes(plan: Plan):
    """(direction, proto, remote, remote_port, local_port): inside and just outside
    every flow's addresses and ports, both directions, every protocol, plus
    strangers, IPv6 and DHCP."""
    for f in plan.flows:
        net = ipaddress.ip_network(f.network)
        addrs = {net.network_address, net.broadcast_address, net.broadcast_address + 1, net.network_address - 1}
        ports = set()
        for r in f.ports or (P(443, 443),):
            ports |= {r.first, r.last, max(1, r.first - 1), min(65535, r.last + 1)}
        for addr in map(str, addrs):
            for port in ports:
                for proto in ("tcp", "udp", "icmp"):
                    p = None if proto == "icmp" else port
                    yield "out", proto, addr, p, None if p is None else 50000
                    yield "in", proto, addr, None if p is None else 50000, p
    for addr in ("192.0.2.200", "8.8.8.8", "2001:db8::1", "2001:db8::53"):
        for proto in ("tcp", "udp"):
            yield "out", proto, addr, 443, 50000
            yield "in", proto, addr, 50000, 22
        yield "out", "icmp", addr, None, None
    for server in (*LEASED, "203.0.113.77"):     # the leased server, and a stranger
        yield "out", "udp", server, 67, 68       # a request (renewal) to it
        yield "in", "udp", server, 67, 68        # its reply, or an unsolicited "offer"
        yield "in", "udp", server, 68, 67        # a client asking the host: no DHCP server here
        yield "out", "udp", server, 68, 67
    yield "out", "udp", "255.255.255.255", 67, 68
    yield "out", "udp", "255.255.255.255", 68, 67


def broadcast_probes():
    """(remote, remote port, local port) sent to the host's limited broadcast address."""
    for remote in (*LEASED, "203.0.113.77", "192.0.2.99"):
        yield remote, 67, 68   # an offer to the broadcast address: from the link only
        yield remote, 68, 67   # a client's discover: the host is no server


@pytest.mark.parametrize("name", [n for n in GOLDEN_NAMES if n != "normal"])
def test_loaded_anchor_allows_exactly_the_plan(name, tmp_path):
    plan = plan_for(name)
    fake = FakePfctl()
    PfBackend(str(tmp_path), run=fake).apply(plan)
    checked = 0
    for direction, proto, addr, rport, lport in probes(plan):
        local = "2001:db8::2" if ":" in addr else "192.0.2.2"
        got = fake.verdict(direction, proto, addr, remote_port=rport, local_port=lport, local=local)
        assert got == expected(plan, direction, proto, addr, rport, lport), (direction, proto, addr, rport, lport)
        checked += 1
    for addr, rport, lport in broadcast_probes():
        got = fake.verdict("in", "udp", addr, remote_port=rport, local_port=lport, local="255.255.255.255")
        assert got == expected(plan, "in", "udp", addr, rport, lport, "255.255.255.255"), (addr, rport, lport)
    assert fake.verdict("out", "tcp", "127.0.0.1", 8080, 50000, local="127.0.0.1", iface="lo0") == "pass"
    assert fake.verdict("in", "tcp", "::1", 50000, 22, local="::1", iface="lo0") == "pass"
    assert checked > 50


def test_tcp_rules_do_not_adopt_a_mid_stream_packet(tmp_path):
    """Only a SYN creates state: a connection open before isolation is not adopted
    by a pass rule (it is killed instead; the client reconnects with a SYN)."""
    fake = FakePfctl()
    PfBackend(str(tmp_path), run=fake).apply(plan_for("standard_0"))
    assert fake.verdict("out", "tcp", "198.51.100.10", 443, 50000, tcp_flags="S") == "pass"
    assert fake.verdict("out", "tcp", "198.51.100.10", 443, 50000, tcp_flags="A") == "block"


# --------------------------------------------------------------- reading pfctl's listing

def test_read_rules_understands_pfctls_normalised_form():
    listing = """\
pass quick on lo0 all no state
pass out quick inet proto udp from any port = bootpc to 255.255.255.255 port = bootps keep state
pass out quick inet proto udp from any port = bootpc to 192.0.2.1 port = bootps keep state
pass in quick inet proto udp from any port = bootps to 255.255.255.255 port = bootpc keep state
pass in quick inet proto udp from 192.0.2.1 port = bootps to any port = bootpc keep state
pass out quick inet proto tcp from any to <t1> port = https flags S/SA keep state
pass in quick inet proto tcp from <t2> to any port 5000:5010 flags S/SA keep state
pass in quick inet proto tcp from <t2> to any port = 22 flags S/SA keep state
pass out quick inet proto icmp from any to <t3> keep state
block drop quick all
"""
    tables = {"t1": ["198.51.100.10"], "t2": ["203.0.113.0/24"], "t3": ["203.0.113.7"]}
    res = read_rules(listing, tables)
    assert res.problems == [] and res.dhcp and res.loopback and res.block_last
    assert res.dhcp_servers == ("192.0.2.1",)
    assert res.atoms == {("out", "tcp", "198.51.100.10/32", 443, 443),
                         ("in", "tcp", "203.0.113.0/24", 5000, 5010),
                         ("in", "tcp", "203.0.113.0/24", 22, 22),
                         ("out", "icmp", "203.0.113.7/32", 0, 0)}


@pytest.mark.parametrize("bad", [
    "pass out quick inet proto tcp from any to any port = https flags S/SA keep state",  # no table
    "pass in quick inet proto tcp from any to <t1> flags S/SA keep state",              # wrong side
    "pass out quick inet proto tcp from any to <t1> port = https flags any keep state",  # adopts mid-stream
    "pass out quick all flags S/SA keep state",
    "anchor \"evil\" all",
    # DHCP to any address (the old blanket rule), or to a server with no reply rule for it
    "pass out quick inet proto udp from any port = bootpc to any port = bootps keep state",
    "pass out quick inet proto udp from any port = bootpc to 203.0.113.7 port = bootps keep state",
])
def test_read_rules_flags_anything_cordon_does_not_render(bad):
    listing = f"pass quick on lo0 all no state\n{bad}\nblock drop quick all\n"
    res = read_rules(listing, {"t1": ["198.51.100.10"]})
    assert res.problems and res.digest() is None


def test_read_rules_wants_the_block_last():
    res = read_rules("pass quick on lo0 all no state\nblock drop quick all\npass out all\n", {})
    assert res.digest() is None
    assert ANCHOR == "com.apple/000.cordon"
