"""Connectivity matrix before / during / after isolation with the nftables backend,
real TCP/UDP/ICMP packets over IPv4 and IPv6 between the harness lab's namespaces.
Expected verdicts come from the plan's flows (tests.integration.nft_plans), never
from the installed rules."""
from __future__ import annotations

import os

import pytest

from tests.harness import Probe, Session
from tests.integration.nft_fixtures import nft_backend  # noqa: F401  (fixture)
from tests.harness.matrix import matrix
from tests.harness.oracle import plan_verdict
from tests.integration.nft_plans import nft, plan_a

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")]

PEERS = ("vendor", "dns", "rmm", "jump", "outside")
SERVICES = (("tcp", 443), ("tcp", 53), ("udp", 53), ("tcp", 8080), ("udp", 8080),
            ("tcp", 3389), ("tcp", 22), ("icmp", None))


# The forward path: a container/VM behind the endpoint, both ways.
FORWARD = (("behind", "outside", "tcp", 443), ("behind", "vendor", "tcp", 443),
           ("behind", "outside", "icmp", None), ("outside", "behind", "tcp", 22))


def matrix_probes() -> list[Probe]:
    # The outbound-only RMM peer tries to connect in from the exception's port (8080).
    from_exception_port = [Probe("rmm", "endpoint", "tcp", p, 4, sport=8080) for p in (22, 3389, 8080)]
    from_exception_port += [Probe("rmm", "endpoint", "udp", 53, 4, sport=8080)]
    return matrix(PEERS, SERVICES, forward=FORWARD, extra=from_exception_port)


def check_matrix(lab, plan, phase: str) -> dict:
    cmp = lab.expect_matrix({p: plan_verdict(lab, plan, p) for p in matrix_probes()}, phase)
    return {r.probe: r.result.verdict for r in cmp.rows}


def test_matrix_before_during_after(lab, nft_backend):
    plan = plan_a()
    before = check_matrix(lab, None, "before")
    sessions = {  # opened before isolation; (session, should it survive)
        "endpoint->vendor tcp/443": (Session(lab, "endpoint", "vendor", "tcp", 443), True),
        "jump->endpoint tcp/3389": (Session(lab, "jump", "endpoint", "tcp", 3389), True),
        "endpoint->outside tcp/22": (Session(lab, "endpoint", "outside", "tcp", 22), False),
        "outside->endpoint tcp/22": (Session(lab, "outside", "endpoint", "tcp", 22), False),
        "endpoint->outside udp/53": (Session(lab, "endpoint", "outside", "udp", 53), False),
        "endpoint->rmm udp/8080": (Session(lab, "endpoint", "rmm", "udp", 8080), False),
    }
    try:
        nft_backend.apply(plan)
        assert nft_backend.read_back().enforces(plan)
        wrong = [f"open connection {name}: expected {'alive' if keep else 'cut'}"
                 for name, (s, keep) in sessions.items() if s.exchange(timeout=1.0) != keep]
        assert not wrong, wrong
        check_matrix(lab, plan, "isolated")
    finally:
        for s, _ in sessions.values():
            s.close()
    nft_backend.clear()
    assert "cordon" not in nft(lab.ns("endpoint"), "list", "tables").stdout
    assert not nft_backend.read_back().present
    after = check_matrix(lab, None, "released")
    assert after == before


def test_overlapping_exceptions_are_merged_not_refused(lab, nft_backend):
    """A /24 and a /32 inside it on the same port: the kernel refuses overlapping
    elements in one set, so they must be merged; both keep working."""
    from platforms.plan import Flow, Plan, PortRange
    from tests.integration.nft_plans import base_flows
    plan = Plan("standard", tuple(base_flows() + [
        Flow("out", "tcp", "203.0.113.0/24", (PortRange(8080, 8080),)),
        Flow("out", "tcp", "203.0.113.20/32", (PortRange(8080, 8080), PortRange(22, 22))),
        Flow("out", "tcp", "203.0.113.16/29", (PortRange(8000, 8100),)),
    ]), dhcp=False)
    nft_backend.apply(plan)
    assert nft_backend.read_back().enforces(plan)
    check_matrix(lab, plan, "overlapping")
