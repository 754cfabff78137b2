"""Hot sets (shape.HOT_SETS) with real packets: a flow's key sits in a hot set while
packets cross, and yet an exception ends when the contract says it ends (DESIGN §11:
an update and a refresh at once, an expiry within a second), in both tables.

The expected verdicts come from the plans' flows, not from the rules; the hot set's
contents are read only to show that the key was hot when the exception ended, so the
test can fail.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import time

import pytest

from platforms.nftables import netdev, readback
from platforms.nftables import wire as w
from platforms.plan import Plan
from tests.harness.probe import ALLOWED, BLOCKED
from tests.harness.waits import wait_for_clock
from tests.integration.nft_fixtures import nft_backend  # noqa: F401  (fixture)
from tests.integration.nft_plans import plan_a

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")]


def _without_rmm(plan: Plan) -> Plan:
    return dataclasses.replace(plan, flows=tuple(f for f in plan.flows if f.name != "rmm"))


def _rmm_until(plan: Plan, ends: float) -> Plan:
    return dataclasses.replace(plan, flows=tuple(dataclasses.replace(f, expires=ends) if f.name == "rmm" else f
                                                 for f in plan.flows))


def _verdict(lab) -> str:
    return lab.probe("endpoint", "rmm", "tcp", 8080, 4).verdict


def _hot(backend, rmm: str) -> dict[str, bool]:
    """Whether rmm . tcp . 8080 is in out_l4's hot set, per table, read through netlink
    at once (it lapses HOT_TIMEOUT_MS after the packet that put it there)."""
    gen = readback.table_state(backend._socket()).gen
    point = ((int(ipaddress.IPv4Address(rmm)),) * 2, (6, 6), (8080, 8080))
    return {name: point in readback.set_elements(backend._socket(), "out_l4_hot", gen, family)
            for name, family in (("inet", w.NFPROTO_INET), ("netdev", netdev.NFPROTO_NETDEV))}


def _make_hot(lab, backend, rmm: str) -> None:
    assert _verdict(lab) == ALLOWED, "rmm tcp/8080 is an exception of the plan"
    assert _hot(backend, rmm) == {"inet": True, "netdev": True}, "a passing packet fills both hot sets"


@pytest.mark.parametrize("how", ["update", "refresh"])
def test_an_exception_removed_is_blocked_at_once_although_its_key_is_hot(lab, nft_backend, how):  # noqa: F811
    rmm = lab.addr("rmm", 4)
    nft_backend.apply(plan_a())
    _make_hot(lab, nft_backend, rmm)
    (nft_backend.apply if how == "update" else nft_backend.refresh)(_without_rmm(plan_a()))
    assert _verdict(lab) == BLOCKED, f"the {how} removed the exception: its next packet is dropped"
    assert lab.probe("endpoint", "vendor", "tcp", 443, 4).verdict == ALLOWED
    assert nft_backend.read_back().enforces(_without_rmm(plan_a()))


def test_an_expiring_exception_ends_within_a_second_although_its_key_is_hot(lab, nft_backend):  # noqa: F811
    rmm = lab.addr("rmm", 4)
    ends = time.time() + 3
    nft_backend.apply(_rmm_until(plan_a(), ends))
    _make_hot(lab, nft_backend, rmm)
    while time.time() < ends - 0.5:  # packets keep the key hot until just before the end
        assert _verdict(lab) == ALLOWED
    wait_for_clock(ends + 1.0)  # the contract: stopped within 1 s of its time
    assert _verdict(lab) == BLOCKED
    assert lab.probe("endpoint", "vendor", "tcp", 443, 4).verdict == ALLOWED
    rb = nft_backend.read_back()
    assert rb.details["problems"] == [], "a key left hot by a lapsed element is not tamper"


def _drop_from_netdev_copy(backend) -> None:
    """Delete rmm's out_l4 element from table netdev cordon alone, as the kernel does when
    its timeout runs out between the read-back's inet dump and its netdev dump."""
    gen = readback.table_state(backend._socket()).gen
    [element] = backend._ruleset.expires["out_l4"]
    backend._socket().batch([("DELSETELEM", 0, body, netdev.NFPROTO_NETDEV)
                             for body in w.setelem_bodies("out_l4", [element], gen)])


@pytest.mark.parametrize("due_in", [0.5, 60.0], ids=["due", "not-due"])
def test_an_element_gone_from_one_copy_is_tamper_unless_it_is_due(lab, nft_backend, due_in):  # noqa: F811
    nft_backend.apply(_rmm_until(plan_a(), time.time() + due_in))
    _drop_from_netdev_copy(nft_backend)
    problems = nft_backend.read_back().details["problems"]
    if due_in < 1.0:  # DESIGN §11: its time has come; either table may drop it first
        assert problems == [], "an expiring element lapsing between two dumps is not tamper"
    else:
        assert [p for p in problems if "elements differ" in p and p.startswith("netdev set out_l4_")], problems
