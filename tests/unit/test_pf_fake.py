"""The fake pfctl itself: it must accept pf.conf(5) lines Cordon never renders, reject
the mistakes a renderer could make the way pfctl reports them, and print rules in
pfctl's normalised form. Otherwise the backend tests would prove nothing."""
from __future__ import annotations

import pytest

from tests.unit.fake_pfctl import FakePfctl, parse_rule_line, parse_ruleset


@pytest.mark.parametrize("line, printed", [
    # examples in the style of pf.conf(5); printed as `pfctl -sr` shows them
    ("pass in on fxp0 proto tcp from any to any port http",
     ["pass in on fxp0 proto tcp from any to any port = http flags S/SA keep state"]),
    ("block in all", ["block drop in all"]),
    ("pass out proto udp to any port 53", ["pass out proto udp from any to any port = domain keep state"]),
    ("pass in proto tcp from 192.0.2.0/24 to any port { 22, 443 }",
     ["pass in proto tcp from 192.0.2.0/24 to any port = ssh flags S/SA keep state",
      "pass in proto tcp from 192.0.2.0/24 to any port = https flags S/SA keep state"]),
    ("pass out quick proto { tcp, udp } to <t> port 5000:5010",
     ["pass out quick proto tcp from any to <t> port 5000:5010 flags S/SA keep state",
      "pass out quick proto udp from any to <t> port 5000:5010 keep state"]),
    ("pass in proto tcp to port 6000 >< 6010 flags any", None),
    ("block return out quick inet6 all", ["block return out quick inet6 all"]),
    ("pass quick on lo0 all", ["pass quick on lo0 all flags S/SA keep state"]),
    ("pass quick on lo0 no state", ["pass quick on lo0 all no state"]),
    ("pass in inet proto icmp from ! 198.51.100.7 to any keep state",
     ["pass in inet proto icmp from ! 198.51.100.7 to any keep state"]),
])
def test_accepts_pf_conf_lines_and_prints_them_normalised(line, printed):
    rules = parse_rule_line(line)
    if printed is not None:
        assert [r.text() for r in rules] == printed


@pytest.mark.parametrize("line, message", [
    ("pass out quik all", "syntax error"),
    ("pass out proto tcp to any port 5000-5010", "syntax error"),        # ranges use ':'
    ("pass out proto udp to any port 53 flags S/SA", "flags only apply to tcp"),
    ("pass out proto icmp to any port 7", "port only applies to tcp/udp"),
    ("pass out to any port 443", "port only applies to tcp/udp"),
    ("pass out proto tcp to any port 70000", "illegal port value"),
    ("pass out proto tcp to 203.0.113.300 port 22", "no IP address found for 203.0.113.300"),
    ("pass out proto tcp to { 203.0.113.1, } port 22", "syntax error"),
    ("pass out proto tcp to any port 22 keep", "syntax error"),
    ("pass out proto bogus all", "unknown protocol bogus"),
    ("table <t> const { 203.0.113.1, <u> }", "syntax error"),
    ('anchor "x"', "syntax error"),   # not inside Cordon's anchor
])
def test_rejects_malformed_lines_like_pfctl(line, message):
    fake = FakePfctl()
    text = "# header\ntable <ok> const { 192.0.2.1 }\n" + line + "\n"
    r = fake(["pfctl", "-a", "com.apple/cordon", "-n", "-f", "-"], text)
    assert r.rc == 1
    assert r.stderr.splitlines()[0] == f"stdin:3: {message}"
    assert r.stderr.splitlines()[-1] == "pfctl: Syntax error in config file: pf rules not loaded"


def test_a_rejected_load_leaves_the_anchor_as_it_was():
    fake = FakePfctl()
    assert fake(["pfctl", "-a", "x/y", "-f", "-"], "block drop quick all\n").rc == 0
    assert fake(["pfctl", "-a", "x/y", "-f", "-"], "pass all\nbogus\n").rc == 1
    assert fake(["pfctl", "-a", "x/y", "-sr"]).stdout == "block drop quick all\n"


def test_tokens_and_references():
    fake = FakePfctl()
    t1 = fake(["pfctl", "-E"]).stderr.split("Token : ")[1].strip()
    t2 = fake(["pfctl", "-E"]).stderr.split("Token : ")[1].strip()
    assert t1 != t2 and fake.enabled
    assert fake(["pfctl", "-X", t1]).rc == 0 and fake.enabled
    assert fake(["pfctl", "-X", t1]).stderr == "pfctl: DIOCSTOPREF: Invalid argument\n"
    assert fake(["pfctl", "-X", t2]).rc == 0 and not fake.enabled


def test_evaluation_order_quick_last_match_and_anchor_order():
    fake = FakePfctl()
    fake(["pfctl", "-E"])
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "pass"  # no rule: pass
    fake(["pfctl", "-a", "com.apple/b", "-f", "-"], "block drop out all\npass out proto tcp all\n")
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "pass"  # last match wins
    fake(["pfctl", "-a", "com.apple/a", "-f", "-"], "block drop out quick proto tcp all\n")
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "block"  # quick in an earlier anchor
    assert fake.verdict("out", "udp", "8.8.8.8", 53, 50000) == "block"  # b: block matches, tcp pass does not
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000, tcp_flags="A") == "block"


def test_whole_file_errors_carry_line_numbers():
    _, errors = parse_ruleset("pass all\n\npass out proto udp all flags S/SA\nblock drop quick all\n", main=False)
    assert errors == ["stdin:3: flags only apply to tcp"]
