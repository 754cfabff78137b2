"""Issue 14: a lost state file must never release the host. `state.json` is deleted under
a running isolation; the agent is restarted (and killed -9 and restarted); it adopts the
table in force (strict: the policy cannot be recovered), never deletes it. Real packets.
Also: a second `cordon run` on the same state dir exits 1 naming the running pid and
leaves the first one serving."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.harness.demo import POLICY_V1
from tests.harness.lab import REPO_ROOT

pytestmark = pytest.mark.root


def verdicts(lab):
    return {name: lab.probe("endpoint", name, "tcp", port).verdict
            for name, port in (("vendor", 443), ("outside", 443), ("rmm", 22))}


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_deleted_state_file_is_adopted_strict_never_released(lab, agent, how):
    agent.policy_set(POLICY_V1)
    agent.isolate(reason="case 14")
    # standard mode: the RMM exception passes (checked from the config, not the agent)
    assert verdicts(lab) == {"vendor": "ALLOWED", "outside": "BLOCKED", "rmm": "ALLOWED"}
    os.unlink(os.path.join(agent.config["state_dir"], "state.json"))
    agent.kill(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    assert "table inet cordon" in agent.nft_tables()
    agent.start()
    st = agent.status()
    assert (st["state"], st["mode"]) == ("isolated", "strict"), st
    assert "adopted" in st["reason"] and st["backend"]["enforcing"] is True
    assert verdicts(lab) == {"vendor": "ALLOWED", "outside": "BLOCKED", "rmm": "BLOCKED"}
    assert agent.audit_events("state_missing")
    agent.release()
    assert "cordon" not in agent.nft_tables()


def test_second_agent_exits_1_naming_the_pid_and_the_first_keeps_serving(lab, agent):
    agent.isolate()
    r = subprocess.run(agent.argv("run", "--config", agent.config_path), capture_output=True, text=True,
                       timeout=60, cwd=REPO_ROOT)
    assert r.returncode == 1 and f"pid {agent.pid}" in r.stderr, r.stderr
    st = agent.status()
    assert st["_exit"] == 0 and st["agent"]["pid"] == agent.pid and st["backend"]["enforcing"] is True
    assert verdicts(lab)["outside"] == "BLOCKED"
