"""Atomic update: switching plan A -> B -> A ... while a probe loop runs never loses a
flow allowed by both and never passes one allowed by neither."""
from __future__ import annotations

import os

import pytest

from tests.harness import Probe, ProbeLoop
from tests.integration.nft_fixtures import nft_backend  # noqa: F401  (fixture)
from tests.integration.nft_plans import plan_a, plan_b

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")]


def test_switching_plans_has_no_window(lab, nft_backend):
    a, b = plan_a(), plan_b(extra=2000)  # a big B makes each batch take a while
    both = [Probe("endpoint", "vendor", "tcp", 443, 4), Probe("endpoint", "dns", "udp", 53, 4),
            Probe("endpoint", "dns", "tcp", 53, 4)]
    neither = [Probe("endpoint", "outside", "tcp", 22, 4), Probe("outside", "endpoint", "tcp", 22, 4),
               Probe("endpoint", "rmm", "tcp", 22, 4), Probe("endpoint", "vendor", "tcp", 22, 4),
               Probe("endpoint", "vendor", "tcp", 443, 6)]
    lab.listen({p.port for p in both + neither})
    nft_backend.apply(a)
    # Two loops: passing probes return at once and so sample densely; blocked ones each
    # wait out their timeout.
    with ProbeLoop(lab, must_pass=both, interval=0.005, timeout=1.0) as passing, \
            ProbeLoop(lab, must_block=neither, interval=0.0, timeout=0.3) as blocking:
        for i in range(12):
            plan = b if i % 2 == 0 else a
            nft_backend.apply(plan)
            assert nft_backend.read_back().enforces(plan)
            passing.wait_rounds(10)   # both loops probe between every two switches
            blocking.wait_rounds(1)
    assert passing.report.rounds >= 100, passing.report.summary()
    assert blocking.report.rounds >= 5, blocking.report.summary()
    assert passing.report.clean, passing.report.summary()
    assert blocking.report.clean, blocking.report.summary()
