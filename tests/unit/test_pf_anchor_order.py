"""Cordon's pf anchor is evaluated before Apple's own (issue 19).

macOS's /etc/pf.conf has `anchor "com.apple/*"`: pf evaluates com.apple's children one after
the other in strcmp order of their paths (xnu pf_ruleset.c: an RB tree ordered by
strcmp(path); pf.c pf_step_into_anchor/pf_step_out_of_anchor walk it with RB_MIN/RB_NEXT,
without descending), and a `quick` match in any of them ends the evaluation (pf_test_rule
breaks out of the whole loop). The fake pfctl models exactly that; expectations below come
from the plan (Plan.allows), not from the rendered text."""
from __future__ import annotations

import pytest

from platforms.pf.backend import PfBackend, evaluated_before
from platforms.pf.render import ANCHOR, render
from tests.unit.fake_pfctl import FakePfctl, parse_ruleset
from tests.unit.test_pf_render import plan_for

# The children of com.apple on a stock Mac (/etc/pf.anchors/com.apple) and ones Apple's
# services load at run time.
APPLE = ["com.apple/100.InternetSharing", "com.apple/200.AirDrop", "com.apple/250.ApplicationFirewall",
         "com.apple/300.NetworkLinkConditioner", "com.apple/400.AdaptiveFirewall"]

# (direction, proto, remote, remote_port, local_port)
PROBES = [("out", "tcp", "8.8.8.8", 443, 50000), ("out", "udp", "8.8.8.8", 53, 50001),
          ("in", "tcp", "203.0.113.66", 40000, 22), ("in", "tcp", "203.0.113.5", 40001, 3389),
          ("out", "tcp", "198.51.100.10", 443, 50002), ("out", "udp", "192.0.2.53", 53, 50003)]


def expected(plan, direction, proto, remote, remote_port, local_port) -> str:
    import ipaddress
    return "pass" if plan.allows(proto, ipaddress.ip_address(remote), local_port, remote_port, direction) else "block"


@pytest.fixture
def fake():
    f = FakePfctl()
    f(["pfctl", "-E"])
    return f


def load(fake, anchor, text):
    r = fake(["pfctl", "-a", anchor, "-f", "-"], text)
    assert r.rc == 0, r.stderr


def test_the_anchor_sorts_before_every_apple_child():
    parent, name = ANCHOR.rsplit("/", 1)
    assert parent == "com.apple" and len(name) < 64 and not name.startswith("_")  # PF_ANCHOR_NAME_SIZE; '_' is reserved
    assert sorted([*APPLE, ANCHOR], key=str.encode)[0] == ANCHOR
    assert evaluated_before(ANCHOR, "".join(f"  {a}\n" for a in APPLE)) == []


def test_the_fake_evaluates_com_apple_children_in_name_order(fake):
    listed = fake(["pfctl", "-a", "com.apple", "-s", "Anchors"]).stdout.split()
    assert listed == APPLE[:4]  # created by the stock com.apple anchor rules, in strcmp order
    load(fake, "com.apple/250.ApplicationFirewall", "pass out quick all\n")
    load(fake, "com.apple/cordon", "block drop quick all\n")  # the old name sorts after Apple's digits
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "pass"
    load(fake, "com.apple/0", "block drop quick all\n")
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "block"


@pytest.mark.parametrize("apple_rules", [
    "pass in quick all\npass out quick all\n",            # e.g. Internet Sharing passing everything
    "pass in all\npass out all\n",                         # not quick: last match, still Apple's
    "block drop in quick all\nblock drop out quick all\n",  # e.g. "block all incoming connections"
])
@pytest.mark.parametrize("plan_name", ["standard_1", "strict"])
def test_cordon_decides_before_apple_anchors(fake, tmp_path, apple_rules, plan_name):
    for anchor in APPLE:
        load(fake, anchor, apple_rules)
    plan = plan_for(plan_name)
    backend = PfBackend(str(tmp_path), run=fake)
    backend.apply(plan)
    assert backend.read_back().enforces(plan)
    for probe in PROBES:
        assert fake.verdict(*probe) == expected(plan, *probe), probe


def test_every_rule_cordon_renders_is_quick():
    """Being evaluated first only decides if each of our matches is final: a non-quick
    rule of ours could be overridden by a later Apple anchor (last match wins)."""
    rs, errors = parse_ruleset(render(plan_for("standard_50_50")), main=False)
    assert not errors and rs.rules and all(r.quick for r in rs.rules)


def test_an_anchor_that_sorts_before_ours_and_holds_rules_is_tamper(fake, tmp_path):
    plan = plan_for("standard_1")
    backend = PfBackend(str(tmp_path), run=fake)
    backend.apply(plan)
    load(fake, "com.apple/!bypass", "pass quick all\n")  # '!' < '0': evaluated first
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "pass"
    rb = backend.read_back()
    assert not rb.enforces(plan) and rb.details["evaluated_first"] == ["com.apple/!bypass"]
    assert any("com.apple/!bypass" in p for p in rb.details["problems"])
    fake(["pfctl", "-a", "com.apple/!bypass", "-F", "all"])  # emptied: removed by pf, decides nothing
    assert backend.read_back().enforces(plan)


def test_an_empty_anchor_that_sorts_first_decides_nothing(fake, tmp_path):
    load(fake, "com.apple/!empty", "table <x> const { 192.0.2.9 }\n")  # tables only, no rules
    plan = plan_for("standard_0")
    backend = PfBackend(str(tmp_path), run=fake)
    backend.apply(plan)
    assert backend.read_back().enforces(plan)


def test_release_leaves_no_anchor_behind(fake, tmp_path):
    backend = PfBackend(str(tmp_path), run=fake)
    backend.apply(plan_for("standard_1"))
    assert ANCHOR in fake(["pfctl", "-a", "com.apple", "-s", "Anchors"]).stdout.split()
    backend.clear()
    assert ANCHOR not in fake(["pfctl", "-a", "com.apple", "-s", "Anchors"]).stdout.split()
    assert fake(["pfctl", "-a", ANCHOR, "-sr"]).rc == 1  # pf removed it: DIOCGETRULES fails
    assert backend.read_back().enforces(None)
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "pass"
