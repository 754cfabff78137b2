"""Plan.allows: the one answer to "does the plan allow this connection" (used by the
connections report and by pf's state killing)."""
from __future__ import annotations

import ipaddress

from platforms.plan import Flow, Plan, PortRange

PLAN = Plan("standard", (
    Flow("out", "tcp", "198.51.100.0/24", (PortRange(443, 443),), "vendor"),
    Flow("in", "tcp", "192.0.2.7/32", (PortRange(22, 22),)),
    Flow("out", "any", "203.0.113.9/32"),
))


def ip(text):
    return ipaddress.ip_address(text)


def test_out_flow_matches_the_remote_port_in_flow_the_local_port():
    assert PLAN.allows("tcp", ip("198.51.100.10"), 50000, 443, "out")
    assert not PLAN.allows("tcp", ip("198.51.100.10"), 50000, 444, "out")
    assert PLAN.allows("tcp", ip("192.0.2.7"), 22, 40000, "in")
    assert not PLAN.allows("tcp", ip("192.0.2.7"), 40000, 22, "in")  # wrong side's port


def test_direction_is_checked_when_known_and_either_when_not():
    assert not PLAN.allows("tcp", ip("192.0.2.7"), 22, 40000, "out")
    assert PLAN.allows("tcp", ip("192.0.2.7"), 22, 40000)
    assert not PLAN.allows("tcp", ip("192.0.2.8"), 22, 40000)


def test_any_protocol_and_portless_connections():
    assert PLAN.allows("udp", ip("203.0.113.9"), 1, 2, "out")
    assert PLAN.allows("icmp", ip("203.0.113.9"), None, None, "out")
    assert not PLAN.allows("icmp", ip("198.51.100.10"), None, None, "out")
