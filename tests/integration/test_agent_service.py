"""The agent as a service (issue 4), on the real `cordon run` in a lab namespace:
privileges over the real control socket, garbage that must not hurt it, and stopping
that must not lift isolation. The full story (kill -9, tamper, sensor types) is in
test_harness_agent.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from agent import client
from agent.errors import NotPermitted
from tests.control_client import send_raw
from tests.harness.demo import POLICY_V1
from tests.harness.lab import REPO_ROOT
from tests.users import NOBODY, as_user

pytestmark = pytest.mark.root


def open_path_for_others(path: str) -> None:
    """The lab keeps its files in private temp dirs; a real install uses /run/cordon (0755)."""
    d = os.path.dirname(path)
    while d not in ("/", ""):
        os.chmod(d, os.stat(d).st_mode | 0o005)
        d = os.path.dirname(d)


def test_non_root_reads_status_but_cannot_change_anything(lab, agent):
    agent.policy_set(POLICY_V1)
    sock = agent.config["control_socket"]
    open_path_for_others(sock)
    before = open(os.path.join(agent.config["state_dir"], "state.json"), "rb").read()

    def attempt() -> int:
        if client.call(sock, "status")["state"] != "normal":
            return 10
        for cmd, args in (("isolate", {"strict": True}), ("release", {}),
                          ("policy_set", {"policy": {**POLICY_V1, "version": 99}})):
            try:
                client.call(sock, cmd, args)
                return 11
            except NotPermitted:
                pass
        return 4

    assert as_user(NOBODY, attempt) == 4
    assert open(os.path.join(agent.config["state_dir"], "state.json"), "rb").read() == before
    assert "cordon" not in agent.nft_tables()
    rejected = agent.audit_events("command_rejected")
    assert {e.get("caller_uid") for e in rejected} == {NOBODY} and len(rejected) == 3


@pytest.mark.parametrize("data", [
    os.urandom(8192),
    b'{"v": 1, "cmd": "isolate", "args": {"str',
    b"x" * (10 * 1024 * 1024),
    b'{"v": 1, "cmd": "uninstall"}\n',
    b'{"v": 1, "cmd": "policy_set", "args": {"policy": {"version": 1, "enabled": true, "outbound": [{"protocol": "tcp", "address": "0.0.0.0/0", "ports": "any"}]}}}\n',
], ids=["random", "truncated", "10MB", "unknown", "hostile-policy"])
def test_garbage_gets_an_error_and_the_agent_keeps_answering(lab, agent, data):
    reply = send_raw(agent.config["control_socket"], data)
    # DESIGN 7: any input gets an error reply that names the problem; never silence.
    assert reply, "the agent closed the connection without an error reply"
    assert json.loads(reply.splitlines()[0])["ok"] is False
    st = agent.status()
    assert st["_exit"] == 0 and st["state"] == "normal" and st["policy"]["stored_version"] is None
    assert agent.alive and "cordon" not in agent.nft_tables()


def test_sigterm_stops_the_agent_without_lifting_isolation(lab, agent):
    agent.isolate(reason="stop test")
    assert agent.kill(signal.SIGTERM) == 0
    assert "table inet cordon" in agent.nft_tables()
    st = agent.status()
    assert st["_exit"] == 3 and st["state"] == "isolated"
    vendor = lab.probe("endpoint", "vendor", "tcp", 443)
    outside = lab.probe("endpoint", "outside", "tcp", 443)
    assert (vendor.verdict, outside.verdict) == ("ALLOWED", "BLOCKED"), (vendor, outside)
    agent.start()
    agent.release()
    assert "cordon" not in agent.nft_tables()


def test_bad_config_exits_2_and_touches_nothing(lab, agent):
    agent.isolate()
    path = agent.config_path + ".bad"
    with open(path, "w") as f:
        f.write(open(agent.config_path).read().replace("sensor_type", "sensor_typo"))
    r = subprocess.run(agent.argv("run", "--config", path), capture_output=True, text=True,
                       timeout=30, cwd=REPO_ROOT)
    assert r.returncode == 2 and "sensor_typo" in r.stderr
    assert agent.status()["backend"]["enforcing"] is True
