"""Exceptions that follow the world (DESIGN §11), with real packets in the lab: a DNS server
the test controls runs on the configured resolver's address (the lab's `dns` host) and
serves the RMM's name; the real agent resolves it through that resolver only.

Every expectation that something stops passing is preceded by the same probe passing.
Waits poll with load-scaled deadlines; nothing asserts on a duration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from agent.fields import format_utc
from tests.harness.dnsserver import write_zone
from tests.harness.driver import Agent, default_config
from tests.harness.errors import CordonWrong
from tests.harness.lab import REPO_ROOT, load_factor
from tests.harness.waits import wait_for_clock, wait_until
from tests.harness.probe import ALLOWED, BLOCKED, Probe

pytestmark = [pytest.mark.root, pytest.mark.slow]

TTL = 2          # seconds: the DNS answers' TTL, and the agent's lower clamp for it
NAME = "rmm.example.com"


class Dns:
    """The lab's resolver host, now answering from a zone file the test writes."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.path = os.path.join(lab.rundir, "zone.json")
        self.write({})
        lab.kill_responder("dns")  # it holds port 53
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        self.log = open(os.path.join(lab.rundir, "dns.log"), "w+")
        self.proc = lab.spawn("dns", sys.executable, "-m", "tests.harness.dnsserver", "--zone", self.path,
                              env=env, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        _poll(lambda: "ready" in open(self.log.name).read(), 15, "the DNS server did not start")

    def write(self, zone: dict) -> None:
        write_zone(self.path, zone)


def _poll(cond, seconds: float, what: str):
    return wait_until(cond, seconds, what, step=0.1, error=CordonWrong)


def _verdicts(lab, probes) -> dict:
    return {r.probe: r.verdict for r in lab.probe_all(probes)}


def _wait_verdicts(lab, want: dict, seconds: float, what: str) -> None:
    last = {}

    def ok():
        nonlocal last
        last = _verdicts(lab, list(want))
        return last == want
    try:
        _poll(ok, seconds, what)
    except AssertionError:
        raise AssertionError(f"{what}: wanted {want}, last seen {last}") from None


def _agent(lab, policy: dict) -> Agent:
    cfg = default_config(lab, "", "")
    del cfg["state_dir"], cfg["control_socket"]
    cfg["exceptions"]["min_host_ttl"] = TTL
    a = Agent(lab, config=cfg)
    a.start()
    a.policy_set(policy)
    return a


def _host_entry(direction_port: int, name: str = NAME, **kw) -> dict:
    return {"protocol": "tcp", "host": name, "ports": str(direction_port), **kw}


def _rules_with_handles(lab) -> list:
    """Every rule of both cordon tables with its kernel handle: a rule rebuilt gets a new one."""
    out = []
    for family in ("inet", "netdev"):
        doc = json.loads(lab.run("endpoint", "nft", "-j", "-a", "list", "table", family, "cordon").stdout)
        out += [(family, o["rule"]["chain"], o["rule"]["handle"]) for o in doc["nftables"] if "rule" in o]
    return out


def _has_element(lab, address: str) -> bool:
    """Does an out_l4 set of table inet cordon hold an element for `address` (nft's view)?"""
    doc = json.loads(lab.run("endpoint", "nft", "-j", "list", "table", "inet", "cordon").stdout)
    return any(f'"{address}"' in json.dumps(e) for o in doc["nftables"]
               if "set" in o and o["set"]["name"].startswith("out_l4") for e in o["set"].get("elem", []))


@pytest.fixture
def dns(lab):
    return Dns(lab)


def test_follows_a_records_both_directions_and_refreshes_set_elements_only(lab, dns):
    rmm, jump = lab.addr("rmm", 4), lab.addr("jump", 4)
    ttl = max(4, round(4 * load_factor()))  # refreshed at 75 %: a quarter of it is the slack
    dns.write({NAME: {"a": [rmm], "ttl": ttl}})
    agent = _agent(lab, {"enabled": True, "outbound": [_host_entry(443)], "inbound": [_host_entry(3389)]})
    try:
        agent.isolate()
        out_rmm, out_jump = Probe("endpoint", "rmm", "tcp", 443, 4), Probe("endpoint", "jump", "tcp", 443, 4)
        in_rmm, in_jump = Probe("rmm", "endpoint", "tcp", 3389, 4), Probe("jump", "endpoint", "tcp", 3389, 4)
        outside = Probe("endpoint", "outside", "tcp", 443, 4)
        _wait_verdicts(lab, {out_rmm: ALLOWED, in_rmm: ALLOWED, out_jump: BLOCKED, in_jump: BLOCKED,
                             outside: BLOCKED}, 10, "the name's address must pass both ways, nothing else")
        st = agent.status()
        [shown] = st["exceptions"]["hosts"]
        assert (shown["host"], shown["addresses"], shown["error"]) == (NAME, [rmm], None) and shown["expires"]
        rules = _rules_with_handles(lab)
        # Over two TTLs of the same answer, the kernel timeouts are renewed before they
        # run out: the address is in the set every time we look.
        ends = time.monotonic() + 2 * ttl
        while time.monotonic() < ends:
            assert _has_element(lab, rmm), ("the address lapsed although DNS kept answering it; agent events: "
                                            + repr([e for e in agent.audit_events() if e.get("event") not in
                                                    ("control_request",)][-12:]))
            time.sleep(0.1)
        assert _verdicts(lab, [out_rmm])[out_rmm] == ALLOWED
        dns.write({NAME: {"a": [jump], "ttl": ttl}})
        _wait_verdicts(lab, {out_jump: ALLOWED, in_jump: ALLOWED, out_rmm: BLOCKED, in_rmm: BLOCKED},
                       3 * ttl, "the exception must follow the new A record within a TTL")
        assert _rules_with_handles(lab) == rules, ("a refresh rebuilt chains or rules; agent events: " + repr(
            [e for e in agent.audit_events() if e.get("event") in
             ("tamper_detected", "refresh_failed", "refresh_not_in_force", "policy_enforced")]))
        assert agent.status()["exceptions"]["hosts"][0]["addresses"] == [jump]
        policy_show = json.loads(agent.cli("policy", "show", "--json").stdout)
        assert policy_show["hosts"][0]["addresses"] == [jump]
        assert agent.audit_events("tamper_detected") == [], "refreshes and lapses are not tamper"
    finally:
        agent.close()


@pytest.mark.parametrize("zone_entry", [{"rcode": "NXDOMAIN"}, {"rcode": "SERVFAIL"}, {"drop": True}],
                         ids=["nxdomain", "servfail", "timeout"])
def test_a_name_that_does_not_resolve_allows_nothing(lab, dns, zone_entry):
    rmm = lab.addr("rmm", 4)
    dns.write({NAME: {"a": [rmm], "ttl": TTL}})
    agent = _agent(lab, {"enabled": True, "outbound": [_host_entry(443)]})
    try:
        agent.isolate()
        probe = Probe("endpoint", "rmm", "tcp", 443, 4)
        vendor = Probe("endpoint", "vendor", "tcp", 443, 4)
        _wait_verdicts(lab, {probe: ALLOWED, vendor: ALLOWED}, 10, "the name must resolve first")
        dns.write({NAME: zone_entry})
        _wait_verdicts(lab, {probe: BLOCKED, vendor: ALLOWED}, 4 * TTL + 10, "a failed name must allow nothing")
        _poll(lambda: agent.status()["exceptions"]["hosts"][0]["error"], 10, "status must say why")
        assert agent.status()["exceptions"]["hosts"][0]["addresses"] == []
    finally:
        agent.close()


def test_a_thousand_records_install_at_most_sixteen(lab, dns):
    unique = [f"{net}.{i}" for net in ("203.0.113", "198.51.100", "192.0.2") for i in range(1, 255)]
    served = (unique * 2)[:1000]  # 1,000 records on the wire; only documentation addresses
    dns.write({NAME: {"records": served, "ttl": 60}})
    agent = _agent(lab, {"enabled": True, "outbound": [_host_entry(8443)]})
    try:
        agent.isolate()
        hosts = _poll(lambda: agent.status()["exceptions"]["hosts"], 10, "no host shown")
        assert 0 < len(hosts[0]["addresses"]) <= 16 and set(hosts[0]["addresses"]) <= set(served)
        doc = json.loads(lab.run("endpoint", "nft", "-j", "list", "table", "inet", "cordon").stdout)
        elems = [e for o in doc["nftables"] if "set" in o and o["set"]["name"].startswith("out_l4")
                 for e in o["set"].get("elem", []) if "8443" in json.dumps(e)]
        assert 0 < len(elems) <= 16
    finally:
        agent.close()


def test_kill_9_lets_resolved_addresses_lapse_and_the_rest_stays(lab, dns):
    rmm = lab.addr("rmm", 4)
    dns.write({NAME: {"a": [rmm], "ttl": TTL}})
    agent = _agent(lab, {"enabled": True, "outbound": [_host_entry(443)]})
    try:
        agent.isolate()
        probe, vendor = Probe("endpoint", "rmm", "tcp", 443, 4), Probe("endpoint", "vendor", "tcp", 443, 4)
        outside = Probe("endpoint", "outside", "tcp", 443, 4)
        _wait_verdicts(lab, {probe: ALLOWED, vendor: ALLOWED, outside: BLOCKED}, 10, "before the kill")
        agent.kill()
        _wait_verdicts(lab, {probe: BLOCKED, vendor: ALLOWED, outside: BLOCKED}, 4 * TTL + 5,
                       "the resolved address must lapse at its timeout; isolation must stay")
        assert "table inet cordon" in agent.nft_tables()
    finally:
        agent.close()


@pytest.mark.parametrize("agent_dies", [False, True], ids=["agent-alive", "agent-dead"])
def test_expires_at_ends_the_exception_at_its_time(lab, dns, agent_dies):
    lead = 6 * load_factor()
    ends = time.time() + lead
    expires_at = format_utc(round(ends))
    ends = round(ends)
    jump = lab.addr("jump", 4)
    agent = _agent(lab, {"enabled": True, "outbound": [
        {"name": "vendor support", "protocol": "tcp", "address": jump, "ports": "443", "expires_at": expires_at}]})
    try:
        agent.isolate()
        probe = Probe("endpoint", "jump", "tcp", 443, 4)
        vendor = Probe("endpoint", "vendor", "tcp", 443, 4)
        assert _verdicts(lab, [probe])[probe] == ALLOWED and time.time() < ends, "must pass before it expires"
        assert agent.status()["exceptions"]["expiring"][0]["expires_at"] == expires_at
        if agent_dies:
            agent.kill()
        wait_for_clock(ends + 1.0)  # the contract: stopped within 1 s of its time
        assert _verdicts(lab, [probe, vendor]) == {probe: BLOCKED, vendor: ALLOWED}
        if not agent_dies:
            [event] = _poll(lambda: agent.audit_events("exception_expired"), 10, "no exception_expired event")
            assert event["expires_at"] == expires_at and event["exception"] == "vendor support"
            assert agent.audit_events("tamper_detected") == [], "a lapse is not tamper"
    finally:
        agent.close()
