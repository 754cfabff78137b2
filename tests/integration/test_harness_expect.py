"""The harness's own reading of DESIGN §1 (tests.harness.expect), checked on small cases
worked out by hand. No root needed: a Lab object is only asked for names and addresses."""
from __future__ import annotations

from tests.harness import ALLOWED, BLOCKED, Lab, Probe
from tests.harness.expect import Model, mentioned_ports, parse_ports, probe_set

CONFIG = {"sensor_type": "endpoint_sensor",
          "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}],
                     "dns_servers": ["198.51.100.53"], "dhcp": True}}
POLICY = {"version": 3, "enabled": True,
          "inbound": [{"protocol": "tcp", "address": "203.0.113.5", "ports": "3389"}],
          "outbound": [{"protocol": "any", "address": "203.0.113.16/29", "ports": "5000-5010"},
                       {"protocol": "icmp", "address": "203.0.113.99", "ports": "any", "active": False}]}
LAB = Lab()  # not started


def allowed(model: Model, *probe) -> bool:
    return model.verdict(LAB, Probe(*probe)) == ALLOWED


def test_parse_ports():
    assert parse_ports("any") == ()
    assert parse_ports("22, 3389, 5000-5010") == ((22, 22), (3389, 3389), (5000, 5010))
    assert parse_ports([22, "80-81"]) == ((22, 22), (80, 81))


def test_standard_isolation_by_hand():
    m = Model(CONFIG)
    m.policy_set(POLICY)
    assert allowed(m, "endpoint", "outside", "tcp", 9, 4)  # normal: all passes
    m.isolate()
    assert allowed(m, "endpoint", "vendor", "tcp", 443, 4)
    assert not allowed(m, "endpoint", "vendor", "udp", 443, 4)
    assert not allowed(m, "vendor", "endpoint", "tcp", 443, 4)       # out never lets the peer in
    assert allowed(m, "endpoint", "dns", "udp", 53, 4) and allowed(m, "endpoint", "dns", "tcp", 53, 4)
    assert not allowed(m, "endpoint", "vendor", "udp", 53, 4)        # DNS only to the resolver
    assert allowed(m, "jump", "endpoint", "tcp", 3389, 4)
    assert not allowed(m, "endpoint", "jump", "tcp", 3389, 4)
    assert allowed(m, "endpoint", "rmm", "udp", 5010, 4)             # any + ports = tcp and udp
    assert not allowed(m, "endpoint", "rmm", "tcp", 5011, 4)
    assert not allowed(m, "endpoint", "rmm", "icmp", None, 4)        # ... but not icmp
    assert not allowed(m, "endpoint", "outside", "icmp", None, 4)    # inactive entry
    assert not allowed(m, "endpoint", "vendor", "tcp", 443, 6)       # IPv6 always dropped
    assert not allowed(m, "behind", "outside", "tcp", 443, 4)        # forward path dropped


def test_strict_disabled_and_release():
    m = Model(CONFIG)
    m.policy_set(POLICY)
    m.isolate(strict=True)
    assert allowed(m, "endpoint", "vendor", "tcp", 443, 4)
    assert not allowed(m, "jump", "endpoint", "tcp", 3389, 4)
    m.isolate()
    m.policy_set(dict(POLICY, version=4, enabled=False))
    assert not allowed(m, "jump", "endpoint", "tcp", 3389, 4)
    m.release()
    assert allowed(m, "outside", "endpoint", "tcp", 9, 6)


def test_sensor_types_decide_when_a_policy_is_enforced():
    live = Model(CONFIG)
    pending = Model(dict(CONFIG, sensor_type="security_agent"))
    for m in (live, pending):
        m.isolate()
        m.policy_set(POLICY)
    assert allowed(live, "jump", "endpoint", "tcp", 3389, 4)
    assert not allowed(pending, "jump", "endpoint", "tcp", 3389, 4)
    pending.isolate()
    assert allowed(pending, "jump", "endpoint", "tcp", 3389, 4)
    assert pending.enforced["version"] == 3
    live.policy_set({k: v for k, v in POLICY.items() if k != "version"})
    assert live.stored["version"] == 4


def test_probe_set_covers_mentioned_and_unmentioned_ports():
    ports = mentioned_ports(CONFIG, [POLICY])
    assert {53, 443, 3389, 5000, 5010, 5011} <= set(ports)
    assert [p for p in ports if p in (9, 8080)] == [9, 8080]
    probes = probe_set(LAB, CONFIG, [POLICY])
    assert Probe("behind", "outside", "icmp", None, 6) in probes
    assert Probe("vendor", "endpoint", "tcp", 9, 4, sport=443) in probes
    assert Probe("rmm", "endpoint", "udp", 9, 4, sport=5000) in probes
    assert all(p.src == "endpoint" or p.dst == "endpoint" or p.src == "behind" for p in probes)
    m = Model(CONFIG)
    m.policy_set(POLICY)
    m.isolate()
    exp = m.expected(LAB, probes)
    assert exp[Probe("vendor", "endpoint", "tcp", 9, 4, sport=443)] == BLOCKED
