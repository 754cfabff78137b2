"""WinDivert backend with real packets: pydivert's eBPF backend enforces the real WinDivert
filters inside the lab's endpoint namespace (a child process holds the handles there).

Expected verdicts come from `expected()`, written from the plan's meaning, not from the
compiler. Lab hosts: vendor 198.51.100.10, dns 198.51.100.53, rmm 203.0.113.20,
jump 203.0.113.5, outside 203.0.113.99, behind (routed through the endpoint).
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from platforms.plan import Flow, Plan, PortRange
from tests.harness import ALLOWED, BLOCKED, Probe, ProbeLoop, Session
from tests.harness.errors import CordonWrong
from tests.harness.lab import REPO_ROOT
from tests.harness.matrix import BEHIND_OUT, matrix as probe_matrix
from tests.harness.oracle import plan_verdict
from tests.harness.waits import wait_until

pytestmark = pytest.mark.root

PEERS = ("vendor", "dns", "rmm", "jump", "outside")
SERVICES = (("tcp", 22), ("tcp", 443), ("tcp", 3389), ("udp", 53), ("icmp", None))


def _p(*ports) -> tuple[PortRange, ...]:
    return tuple(PortRange(p, p) for p in ports)


VENDOR = (Flow("out", "tcp", "198.51.100.10/32", _p(443), "vendor", "vendor"),
          Flow("out", "udp", "198.51.100.53/32", _p(53), "dns", "dns"),
          Flow("out", "tcp", "198.51.100.53/32", _p(53), "dns", "dns"))
PLAN_A = Plan("standard", VENDOR + (
    Flow("out", "tcp", "203.0.113.20/32", (), name="rmm any tcp"),
    Flow("out", "udp", "203.0.113.20/32", (), name="rmm any udp"),
    Flow("in", "tcp", "203.0.113.5/32", _p(22, 3389), name="jump"),
    Flow("in", "icmp", "203.0.113.5/32", (), name="jump ping"),
), True, 1)
PLAN_B = Plan("standard", VENDOR + (
    Flow("out", "tcp", "203.0.113.99/32", _p(443), name="outside https"),
    Flow("in", "tcp", "203.0.113.5/32", _p(3389), name="jump rdp"),
), True, 2)
PLAN_STRICT = Plan("strict", VENDOR, True, 2)


def expected(lab, plan: Plan | None, p: Probe) -> str:
    """The verdict the plan means for a probe: the harness's one oracle (DESIGN 1)."""
    return plan_verdict(lab, plan, p)


def matrix() -> list[Probe]:
    # the exception's / vendor's own ports as source ports: still no way in
    from_allowed_ports = [Probe("rmm", "endpoint", "tcp", 22, 4, sport=443),
                          Probe("rmm", "endpoint", "udp", 3389, 4, sport=4444),
                          Probe("vendor", "endpoint", "tcp", 3389, 4, sport=443)]
    return probe_matrix(PEERS, SERVICES, forward=BEHIND_OUT, extra=from_allowed_ports)


class Agent:
    """The backend in a child process inside the endpoint namespace."""

    def __init__(self, lab, state_dir: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        self.proc = lab.spawn("endpoint", sys.executable, "-m", "tests.integration.windivert_child",
                              *([state_dir] if state_dir else []),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)

    def cmd(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"windivert child died (rc={self.proc.poll()})"
        return json.loads(line)

    def apply(self, plan: Plan) -> dict:
        answer = self.cmd(cmd="apply", plan=plan.to_json())
        assert answer["ok"], answer
        return answer


@pytest.fixture
def lab():
    from tests.harness import Lab
    with Lab() as lab:
        lab.listen([4444])
        yield lab


@pytest.fixture
def agent(lab):
    return Agent(lab)  # the lab kills it at teardown


def check(lab, plan, title):
    lab.expect_matrix({p: expected(lab, plan, p) for p in matrix()}, title)


def test_matrix_before_during_after(lab, agent):
    check(lab, None, "before")
    agent.apply(PLAN_A)
    check(lab, PLAN_A, "isolated, policy A")
    assert agent.cmd(cmd="clear")["ok"]
    check(lab, None, "released")


def test_strict_and_release(lab, agent):
    agent.apply(PLAN_STRICT)
    check(lab, PLAN_STRICT, "strict")
    agent.cmd(cmd="clear")
    check(lab, None, "released")


def test_udp_exception_reply_passes_but_unsolicited_datagram_does_not(lab, agent):
    agent.apply(PLAN_A)
    assert lab.probe("endpoint", "rmm", "udp", 53).verdict == ALLOWED  # reply to what the host sent
    for sport in (53, 4444):  # even from the port the host just talked to
        r = lab.probe("rmm", "endpoint", "udp", 4444, sport=sport)
        assert r.verdict == BLOCKED, r


def test_atomic_switch_a_to_b_under_probe_loop(lab, agent):
    agent.apply(PLAN_A)
    both = [Probe("endpoint", "vendor", "tcp", 443, 4), Probe("jump", "endpoint", "tcp", 3389, 4),
            Probe("endpoint", "dns", "udp", 53, 4)]
    neither = [Probe("endpoint", "outside", "tcp", 22, 4), Probe("rmm", "endpoint", "tcp", 22, 4),
               Probe("endpoint", "vendor", "tcp", 443, 6), Probe("behind", "outside", "tcp", 443, 4)]
    with ProbeLoop(lab, must_pass=both, must_block=neither, interval=0.02, timeout=0.3) as loop:
        for plan in (PLAN_B, PLAN_A, PLAN_B, PLAN_A, PLAN_B):
            loop.wait_rounds(25)
            agent.apply(plan)  # each switch falls inside probe rounds
        loop.wait_rounds(25)
    assert loop.report.rounds >= 6
    assert loop.report.clean, loop.report.summary()
    check(lab, PLAN_B, "after A->B")


def test_open_connections_are_cut_unless_allowed(lab, agent):
    with Session(lab, "endpoint", "outside", "tcp", 443) as cut, \
            Session(lab, "endpoint", "rmm", "tcp", 22) as kept, \
            Session(lab, "jump", "endpoint", "tcp", 8080) as cut_in:
        agent.apply(PLAN_A)
        assert not cut.exchange(timeout=0.5)
        assert not cut_in.exchange(timeout=0.5)
        assert kept.exchange()


def big_plan() -> Plan:
    """200 exceptions per direction, lab hosts among them."""
    out, inn = [Flow("out", "tcp", "203.0.113.20/32", _p(443), name="rmm")], \
               [Flow("in", "tcp", "203.0.113.5/32", _p(3389), name="jump")]
    fillers = [a for a in ipaddress.IPv4Network("203.0.113.0/24").hosts()
               if str(a) not in ("203.0.113.20", "203.0.113.5", "203.0.113.99")]
    fillers += list(ipaddress.IPv4Network("192.0.2.128/25").hosts())
    for i, a in enumerate(fillers[:199]):
        out.append(Flow("out", ("tcp", "udp")[i % 2], f"{a}/32", _p(443, 8443), name=f"o{i}"))
    for i, a in enumerate(fillers[-199:]):
        inn.append(Flow("in", "tcp", f"{a}/32", _p(22, 3389), name=f"i{i}"))
    return Plan("standard", VENDOR + tuple(out + inn), True, 5)


def test_200_exceptions_per_direction(lab, agent):
    plan = big_plan()
    assert len(plan.by_origin("exception")) == 400
    agent.apply(plan)
    rb = agent.cmd(cmd="read_back")
    assert rb["details"]["shape"] == "coarse"
    probes = [Probe("endpoint", "rmm", "tcp", 443, 4), Probe("endpoint", "rmm", "tcp", 22, 4),
              Probe("endpoint", "rmm", "udp", 53, 4), Probe("rmm", "endpoint", "tcp", 443, 4),
              Probe("jump", "endpoint", "tcp", 3389, 4), Probe("jump", "endpoint", "tcp", 22, 4),
              Probe("endpoint", "jump", "tcp", 3389, 4), Probe("endpoint", "outside", "tcp", 443, 4),
              Probe("outside", "endpoint", "tcp", 3389, 4), Probe("endpoint", "vendor", "tcp", 443, 4),
              Probe("endpoint", "dns", "udp", 53, 4), Probe("endpoint", "rmm", "tcp", 443, 6),
              Probe("rmm", "endpoint", "tcp", 22, 4, sport=443)]
    lab.expect_matrix({p: expected(lab, plan, p) for p in probes}, "200+200")


def fifty_plan() -> Plan:
    """50 exceptions per direction, lab hosts among them: split over several DROP handles."""
    plan = big_plan()
    out = [f for f in plan.by_origin("exception") if f.direction == "out"][:50]
    inn = [f for f in plan.by_origin("exception") if f.direction == "in"][:50]
    return Plan("standard", VENDOR + tuple(out + inn), True, 6)


def test_50_exceptions_per_direction_split_over_address_ranges(lab, agent):
    """Every exception in a DROP handle of its address range (no Python for TCP): the
    verdicts of real packets are the contract's, and the handles are several."""
    plan = fifty_plan()
    agent.apply(plan)
    rb = agent.cmd(cmd="read_back")
    assert rb["details"]["shape"] == "split"
    roles = [h["role"] for h in rb["details"]["handles"]]
    assert sum(r.startswith("drop") for r in roles) >= 2, roles
    probes = [Probe("endpoint", "rmm", "tcp", 443, 4), Probe("endpoint", "rmm", "tcp", 22, 4),
              Probe("endpoint", "rmm", "udp", 53, 4), Probe("rmm", "endpoint", "tcp", 443, 4),
              Probe("jump", "endpoint", "tcp", 3389, 4), Probe("jump", "endpoint", "tcp", 22, 4),
              Probe("endpoint", "jump", "tcp", 3389, 4), Probe("endpoint", "outside", "tcp", 443, 4),
              Probe("outside", "endpoint", "tcp", 3389, 4), Probe("endpoint", "vendor", "tcp", 443, 4),
              Probe("endpoint", "dns", "udp", 53, 4), Probe("rmm", "endpoint", "tcp", 22, 4, sport=443)]
    lab.expect_matrix({p: expected(lab, plan, p) for p in probes}, "50+50 split")


def test_read_back_and_honest_crash_semantics(lab, agent):
    assert agent.cmd(cmd="read_back")["present"] is False
    agent.apply(PLAN_A)
    rb = agent.cmd(cmd="read_back")
    # The filters inside eBPFDivert's programs cannot be read back: the digest says the
    # programs are attached and this process's handles are open. The packets are the evidence.
    assert rb["present"]
    assert rb["details"]["kernel_read_back"] is True and rb["details"]["depends_on_process"] is True
    assert {h["role"] for h in rb["details"]["handles"]} >= {"base", "drop1", "forward"}
    assert lab.probe("endpoint", "outside", "tcp", 443).verdict == BLOCKED
    # kill -9 of a process with no guardian (no state dir): its handles die with it;
    # eBPFDivert lets traffic through once the handle's heartbeat is older than 3 s. This is
    # why the agent hands every plan to a guardian (test_windivert_guardian.py).
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    wait_until(lambda: lab.probe("endpoint", "outside", "tcp", 443).verdict == ALLOWED, 10,
               "isolation lifted after the agent died (eBPFDivert's 3 s heartbeat)", error=CordonWrong)


def _tc_programs(lab, dev: str, hook: str) -> str:
    """What `tc` (iproute2, not the code under test) says is attached on `dev`'s hook."""
    return lab.run("endpoint", "tc", "filter", "show", "dev", dev, hook, check=False).stdout


def test_deleted_ebpf_attachment_is_read_back_and_repaired(lab, agent):
    """Issue 19: deleting eBPFDivert's clsact qdisc lifts isolation; read-back must see it
    (digest None: the engine logs tamper_detected and re-applies) and a re-apply repairs it."""
    agent.apply(PLAN_A)
    rb = agent.cmd(cmd="read_back")
    assert rb["digest"] == PLAN_A.digest() and rb["details"]["missing_attachments"] == []
    assert "tc_divert" in _tc_programs(lab, "eth0", "ingress") and "tc_divert" in _tc_programs(lab, "eth0", "egress")
    blocked = Probe("endpoint", "outside", "tcp", 443, 4)
    assert lab.probe_all([blocked])[0].verdict == BLOCKED

    lab.run("endpoint", "tc", "qdisc", "del", "dev", "eth0", "clsact")
    assert "tc_divert" not in _tc_programs(lab, "eth0", "egress")
    assert lab.probe_all([blocked])[0].verdict == ALLOWED  # the tampering really lifted isolation
    t0 = time.perf_counter()
    rb = agent.cmd(cmd="read_back")
    print(f"read-back after the deletion: {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert rb["digest"] is None
    assert {"eth0/ingress", "eth0/egress"} <= set(rb["details"]["missing_attachments"])

    agent.apply(PLAN_A)  # what Engine.reconcile does after tamper_detected
    rb = agent.cmd(cmd="read_back")
    assert rb["digest"] == PLAN_A.digest() and rb["details"]["missing_attachments"] == []
    assert "tc_divert" in _tc_programs(lab, "eth0", "egress")
    check(lab, PLAN_A, "repaired")
