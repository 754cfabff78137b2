"""`nft` as an independent oracle for what the backend installs through netlink, and the
rendered text (`cordon rules --backend nftables`) loaded by `nft -f` in a namespace."""
from __future__ import annotations

import ipaddress
import os
import threading

import pytest

from platforms.plan import Flow, Plan, PortRange
from platforms.nftables import NftablesBackend
from tests.harness.lab import load_factor
from tests.integration.nft_fixtures import bare_namespace
from tests.integration.nft_plans import base_flows, nft, nft_json_table, plan_a, plan_b

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")]

PROTO = {"tcp": 6, "udp": 17, "icmp": 1}


def overlap_plan() -> Plan:
    return Plan("standard", tuple(base_flows() + [
        Flow("out", "tcp", "203.0.113.0/24", (PortRange(443, 443),)),
        Flow("out", "tcp", "203.0.113.7/32", (PortRange(443, 443), PortRange(22, 22))),
        Flow("in", "any", "192.0.2.0/28"), Flow("in", "icmp", "192.0.2.1/32"),
    ]), dhcp=False)


def strict_empty_plan() -> Plan:
    return Plan("strict", (), dhcp=False)


def _range(v, parse=int):
    if isinstance(v, dict) and "range" in v:
        return parse(v["range"][0]), parse(v["range"][1])
    if isinstance(v, dict) and "prefix" in v:
        net = ipaddress.ip_network(f"{v['prefix']['addr']}/{v['prefix']['len']}")
        return int(net.network_address), int(net.broadcast_address)
    return parse(v), parse(v)


def _ip(v) -> int:
    return int(ipaddress.IPv4Address(v))


def _proto(v) -> int:
    return PROTO[v] if isinstance(v, str) else int(v)


def nft_sets(ns: str) -> dict:
    """Set name -> set of numeric (addr range, proto range[, port range]) as nft shows them."""
    out = {}
    for o in nft_json_table(ns):
        if "set" not in o:
            continue
        elems = set()
        for e in o["set"].get("elem", []):
            parts = e["concat"] if isinstance(e, dict) and "concat" in e else e["elem"]["val"]["concat"]
            parsed = [_range(parts[0], _ip), _range(parts[1], _proto)]
            parsed += [_range(p) for p in parts[2:]]
            elems.add(tuple(parsed))
        base, _, gen = o["set"]["name"].rpartition("_")  # out_l4_a: generation a
        assert gen in ("a", "b") and base not in out
        out[base] = elems
    return out


def expected_sets(plan: Plan) -> dict:
    """Straight from the flows; valid for plans without overlapping flows. Hot sets empty."""
    out = {n: set() for n in ("out_l4", "out_l3", "in_l4", "in_l3")}
    for f in plan.flows:
        net = f.ip_network
        a = (int(net.network_address), int(net.broadcast_address))
        if f.protocol in ("tcp", "udp"):
            for p in f.ports or (PortRange(1, 65535),):
                ports = (p.first, p.last) if f.ports else (0, 65535)
                out[f"{f.direction}_l4"].add((a, (PROTO[f.protocol],) * 2, ports))
        else:
            proto = (1, 1) if f.protocol == "icmp" else (0, 255)
            out[f"{f.direction}_l3"].add((a, proto))
    # Each set's hot set: packets fill it, so in a namespace no packet crossed it is empty.
    return out | {f"{n}_hot": set() for n in out}


def test_nft_sees_what_the_plan_allows():
    plan = plan_b(extra=30)
    with bare_namespace() as ns:
        backend = NftablesBackend(netns=ns)
        try:
            backend.apply(plan_a())
            backend.apply(plan)  # an update: what is left must be exactly plan's
            objs = nft_json_table(ns)
            chains = {o["chain"]["name"]: o["chain"] for o in objs if "chain" in o}
            assert set(chains) == {"input", "output", "forward"}
            for name, c in chains.items():
                assert (c["type"], c["hook"], c["prio"], c["policy"]) == ("filter", name, 0, "drop")
            assert nft_sets(ns) == expected_sets(plan)
            text = nft(ns, "list", "table", "inet", "cordon").stdout
            assert "established" not in text
            sport_rules = [line.strip() for line in text.splitlines() if "sport" in line]
            assert sport_rules == []  # plan_b has no DHCP
            assert 'iif "lo" accept' in text and 'oif "lo" accept' in text
            assert "meta nfproto ipv6 drop" in text
        finally:
            backend.clear()
            backend.close()


def _strip_handles(objs):
    if isinstance(objs, dict):
        return {k: _strip_handles(v) for k, v in objs.items() if k != "handle"}
    if isinstance(objs, list):
        return [_strip_handles(v) for v in objs]
    return objs


@pytest.mark.parametrize("make_plan", [plan_a, lambda: plan_b(extra=40), overlap_plan,
                                       strict_empty_plan], ids=["a", "b40", "overlap", "empty"])
def test_render_loads_with_nft_and_equals_what_apply_installs(make_plan, tmp_path):
    plan = make_plan()
    path = tmp_path / "cordon.nft"
    with bare_namespace() as via_netlink, bare_namespace() as via_nft:
        b = NftablesBackend(netns=via_netlink)
        try:
            path.write_text(b.render(plan))  # devices of that namespace (only lo: no netdev chains)
            b.apply(plan)
            for _ in range(2):  # loading the file again replaces the table
                nft(via_nft, "-f", str(path))
            applied, loaded = nft_json_table(via_netlink), nft_json_table(via_nft)
            assert _strip_handles(applied) == _strip_handles(loaded)
            # And the netlink read-back of the nft-loaded table sees this plan (a plan with
            # overlaps reads back merged, so only its rules and shape can be compared).
            reader = NftablesBackend(netns=via_nft)
            rb = reader.read_back()
            reader.close()
            # `nft -f` cannot give a table flags owner|persist: the read-back says so, and
            # nothing else differs.
            assert [p for p in rb.details["problems"] if "flags" not in p] == []
            assert rb.details["problems"] == [
                f"table {fam} cordon flags [] differ from ['owner', 'persist']" for fam in ("inet", "netdev")]
            assert rb.digest is None  # not enforcing as Cordon must (no persist): repaired
        finally:
            b.clear()
            b.close()


def test_read_back_reports_changes_and_apply_repairs_them():
    plan = plan_a()
    with bare_namespace() as ns:
        first = NftablesBackend(netns=ns)
        first.apply(plan)
        first.close()  # orphaned: persist keeps it, root may now edit it
        nft(ns, "add", "element", "inet", "cordon", "out_l4_a", "{ 203.0.113.99 . tcp . 22 }")
        second = NftablesBackend(netns=ns)
        try:
            rb = second.read_back()
            # the added element is seen: not enforcing, and named (the netdev twin of that set
            # no longer matches the inet one, DESIGN §6)
            assert rb.present and not rb.enforces(plan)
            assert any(p.startswith("netdev set out_l4_") and "elements differ" in p
                       for p in rb.details["problems"]), rb.details
            nft(ns, "add", "rule", "inet", "cordon", "input", "accept")
            rb = second.read_back()
            assert rb.digest is None and rb.details["problems"]
            second.apply(plan)
            assert second.read_back().enforces(plan)
            assert "203.0.113.99" not in nft(ns, "list", "table", "inet", "cordon").stdout
            assert nft_sets(ns) == expected_sets(plan)
        finally:
            second.clear()
            second.close()
        assert nft_json_table(ns) is None


def test_wait_for_change_sees_other_processes_only():
    with bare_namespace() as ns:
        backend = NftablesBackend(netns=ns)
        try:
            backend.apply(plan_a())
            assert backend.wait_for_change(0.2) is False
            backend.apply(plan_b())
            assert backend.wait_for_change(0.3) is False  # our own change
            # Another process changes the ruleset while we wait: the wait must end with True
            # (the event, not a clock: the 60 s bound only guards against a hang).
            timer = threading.Timer(0.2, lambda: nft(ns, "add", "table", "inet", "other"))
            timer.start()
            assert backend.wait_for_change(60.0 * load_factor()) is True
            timer.join()
        finally:
            backend.clear()
            backend.close()


def test_clear_is_idempotent_and_leaves_nothing():
    with bare_namespace() as ns:
        backend = NftablesBackend(netns=ns)
        try:
            backend.clear()
            backend.apply(plan_a())
            backend.clear()
            backend.clear()
            assert nft_json_table(ns) is None
            assert not backend.read_back().present
        finally:
            backend.close()


def test_every_rule_is_tagged_and_a_foreign_rule_is_named():
    with bare_namespace() as ns:
        first = NftablesBackend(netns=ns)
        first.apply(plan_a())
        first.close()  # orphaned: persist keeps it, root may now edit it
        rules = [o["rule"] for o in nft_json_table(ns) if "rule" in o]
        assert rules and all(r.get("comment", "").startswith("cordon/") for r in rules)
        nft(ns, "add", "rule", "inet", "cordon", "forward", "accept")
        nft(ns, "add", "rule", "inet", "cordon", "input", "counter", "accept",
            "comment", '"cordon/loopback"')
        second = NftablesBackend(netns=ns)
        try:
            problems = second.read_back().details["problems"]
            assert "forward: foreign rule (immediate)" in problems
            assert any(p.startswith("input: rule cordon/loopback: undecodable") for p in problems), problems
        finally:
            second.clear()
            second.close()
