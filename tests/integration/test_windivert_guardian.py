"""The WinDivert agent and its guardian (platforms/windivert/guardian.py) with real packets
through pydivert's eBPF backend: the agent's death never lifts isolation nor cuts the
vendor, the guardian's death neither, and each restarts (or is adopted by) the other.
Both killed: isolation ends (eBPFDivert's 3 s heartbeat), which is what a restart repairs.

Expected verdicts come from the plan's meaning (tests/harness/oracle.py), not the code.
"""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.harness import ALLOWED, Probe, ProbeLoop
from tests.harness.errors import CordonWrong
from tests.harness.lab import load_factor
from tests.harness.waits import wait_until
from tests.integration.test_windivert import PLAN_A, PLAN_B, Agent, check

pytestmark = pytest.mark.root

VENDOR = Probe("endpoint", "vendor", "tcp", 443, 4)
MUST_PASS = [VENDOR, Probe("endpoint", "dns", "udp", 53, 4), Probe("jump", "endpoint", "tcp", 22, 4)]
MUST_BLOCK = [Probe("endpoint", "outside", "tcp", 443, 4), Probe("outside", "endpoint", "tcp", 22, 4),
              Probe("rmm", "endpoint", "tcp", 22, 4), Probe("endpoint", "vendor", "tcp", 443, 6),
              Probe("behind", "outside", "tcp", 443, 4)]
HEARTBEAT_S = 3.0   # eBPFDivert forgets a dead process's handles after this
# eBPFDivert (Linux) captures what it cannot lower into kernel rules for the process that
# opened the handle; after a kill -9 those packets wait for a reader that is gone until the
# heartbeat expires, so every flow stalls for up to 3 s (no leak: they are not delivered).
# Windows removes a dead process's filters at once. Losses are allowed only in that window.
STALL_S = HEARTBEAT_S + 1.0


@pytest.fixture
def state_dir(tmp_path, lab):
    """The agent's state dir (the lab: conftest's); teardown kills the guardians started for it (found by it:
    nothing else), before the lab removes the namespace they run in."""
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    yield str(d)
    for p in guardians(str(d)):
        kill9(p)


def guardians(state_dir: str) -> list[psutil.Process]:
    """Guardian processes of `state_dir`, from the process table (not from their files)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if "platforms.windivert.guardian" in argv and argv[-1:] == [state_dir] and not gone(p):
            found.append(p)
    return found


def one_guardian(state_dir: str) -> psutil.Process:
    wait_until(lambda: len(guardians(state_dir)) == 1, 10, "one guardian runs")
    return guardians(state_dir)[0]


def gone(proc) -> bool:
    """Exited (a guardian is the agent's child, not ours: dead, it is a zombie until then)."""
    try:
        return psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill9(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    wait_until(lambda: gone(proc), 10, f"pid {proc.pid} gone after SIGKILL")


def watched(lab, seconds: float, action) -> tuple[ProbeLoop, float]:
    """`action()` under a probe loop, which then runs on `seconds` past it; returns the
    loop and when (on the loop's clock) the action was done."""
    with ProbeLoop(lab, must_pass=MUST_PASS, must_block=MUST_BLOCK, interval=0.05, timeout=0.5) as loop:
        action()
        at = loop.elapsed()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            loop.wait_rounds(5)
    return loop, at


def judge(loop: ProbeLoop, at: float, what: str) -> None:
    """No leak, no unknown at any time; losses only in the stall after a kill (a probe that
    answers late by its 0.5 s timeout is lost at most that much later)."""
    rep = loop.report
    late = [x for x in rep.losses if x[0] > at + STALL_S * load_factor() + 0.5]
    ts = [t - at for t, _, _ in rep.losses]
    print(f"{what}: " + (f"{len(ts)} probes lost, +{min(ts):.2f}s to +{max(ts):.2f}s after it" if ts else "no loss"))
    assert not rep.leaks and not rep.unknown, rep.summary()
    assert not late, f"flows still lost after the stall:\n{rep.summary()}"


def test_kill_9_of_the_agent_keeps_isolation_and_the_vendor_and_a_new_agent_adopts(lab, state_dir):
    agent = Agent(lab, state_dir)
    agent.apply(PLAN_A)
    guardian = one_guardian(state_dir)
    rb = agent.cmd(cmd="read_back")
    assert rb["digest"] == PLAN_A.digest() and rb["details"]["guardian"]["pid"] == guardian.pid

    judge(*watched(lab, 2 * STALL_S, lambda: kill9(agent.proc)), "kill -9 of the agent")
    check(lab, PLAN_A, "agent killed, guardian alone")

    again = Agent(lab, state_dir)
    rb = again.cmd(cmd="read_back")   # before it applies: what the guardian holds
    assert rb["present"] and rb["digest"] == PLAN_A.digest()
    again.apply(PLAN_A)
    assert guardians(state_dir) == [guardian], "the restarted agent adopted the running guardian"
    check(lab, PLAN_A, "restarted agent")


def test_kill_9_of_the_guardian_keeps_isolation_and_the_agent_starts_another(lab, state_dir):
    agent = Agent(lab, state_dir)
    agent.apply(PLAN_A)
    first = one_guardian(state_dir)

    judge(*watched(lab, 2 * STALL_S, lambda: kill9(first)), "kill -9 of the guardian")
    rb = agent.cmd(cmd="read_back")
    assert rb["digest"] is None and rb["details"]["guardian"] == {"running": False}  # the engine re-applies
    t0 = time.monotonic()
    agent.apply(PLAN_A)   # what Engine.reconcile does after tamper_detected
    second = one_guardian(state_dir)
    print(f"new guardian in force {time.monotonic() - t0:.2f}s after the re-apply began")
    assert second.pid != first.pid
    assert agent.cmd(cmd="read_back")["digest"] == PLAN_A.digest()
    kill9(agent.proc)     # and the new guardian alone enforces
    time.sleep(2 * HEARTBEAT_S)
    check(lab, PLAN_A, "new guardian alone")


def test_both_killed_lifts_isolation_until_the_agent_restarts(lab, state_dir):
    agent = Agent(lab, state_dir)
    agent.apply(PLAN_A)
    guardian = one_guardian(state_dir)
    outside = Probe("endpoint", "outside", "tcp", 443, 4)
    kill9(agent.proc)
    kill9(guardian)
    t0 = time.monotonic()
    wait_until(lambda: lab.probe_all([outside])[0].verdict == ALLOWED, 10,
               "isolation lifted once both processes died (eBPFDivert's heartbeat)", error=CordonWrong)
    print(f"both killed: isolation lifted after {time.monotonic() - t0:.2f}s")
    again = Agent(lab, state_dir)
    t0 = time.monotonic()
    again.apply(PLAN_A)
    print(f"restarted agent enforcing (with a new guardian) {time.monotonic() - t0:.2f}s after apply began")
    assert again.cmd(cmd="read_back")["digest"] == PLAN_A.digest()
    assert len(guardians(state_dir)) == 1
    check(lab, PLAN_A, "restarted after both died")


def test_release_ends_the_guardian_and_a_switch_holds_under_a_probe_loop(lab, state_dir):
    agent = Agent(lab, state_dir)
    agent.apply(PLAN_A)
    guardian = one_guardian(state_dir)
    os.kill(guardian.pid, signal.SIGTERM)   # only a withdrawn plan ends it
    time.sleep(0.5)
    assert not gone(guardian)
    both = [VENDOR, Probe("jump", "endpoint", "tcp", 3389, 4)]
    neither = [Probe("endpoint", "outside", "tcp", 22, 4), Probe("rmm", "endpoint", "tcp", 22, 4)]
    with ProbeLoop(lab, must_pass=both, must_block=neither, interval=0.02, timeout=0.3) as loop:
        for plan in (PLAN_B, PLAN_A, PLAN_B):
            loop.wait_rounds(25)
            agent.apply(plan)
        loop.wait_rounds(25)
    assert loop.report.clean, loop.report.summary()
    assert agent.cmd(cmd="read_back")["details"]["guardian"]["digest"] == PLAN_B.digest()
    check(lab, PLAN_B, "after A->B->A->B with the guardian")
    assert agent.cmd(cmd="clear")["ok"]
    wait_until(lambda: gone(guardian), 10, "the guardian exits once the plan is withdrawn")
    assert guardians(state_dir) == []
    check(lab, None, "released")
