"""Offline (DESIGN §10): while the broker is away the agent's local control keeps
answering; commands published while the agent cannot reach the broker are applied when
it reconnects, in order, unless they expired first. Release tokens work with no network."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest

from agent.channel import wire as fmt
from tests.integration.console_fixtures import (V1, agents, block_broker, broker, console, lab, wait_audit,  # noqa: F401
                                                wire)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_broker_away_local_control_answers_and_queued_commands_apply_unless_expired(lab, broker, console, agents, wire):
    (ep1,) = agents(("ep1", "endpoint", "endpoint_sensor"))
    key = fmt.load_private_key(console.key)
    broker.kill()
    wait_audit(ep1, "console_disconnected", 1)
    # The broker is gone and the agent keeps trying: local control is not held up.
    assert ep1.cli("status", "--json").returncode == 0
    ep1.isolate(strict=True, reason="local while offline")
    assert ep1.status()["mode"] == "strict"

    block_broker(lab, ["endpoint"], True)   # the agent cannot reach the broker once it is back
    broker.start()
    cmds = [fmt.new_command("ep1", "set_policy", {"policy": V1}, timedelta(hours=1)),
            fmt.new_command("ep1", "isolate", {"strict": True, "reason": "too late"}, timedelta(seconds=2)),
            fmt.new_command("ep1", "isolate", {"reason": "queued"}, timedelta(hours=1))]
    for c in cmds:
        wire.publish("cordon.v1.cmd.ep1", fmt.sign(c, key))
    expired_at = fmt.parse_time(cmds[1]["expires_at"], "expires_at").timestamp()
    while time.time() <= expired_at + 0.5:   # let the short-lived command expire while queued
        time.sleep(0.1)
    assert ep1.cli("policy", "show", "--json").returncode == 0   # still answering locally
    block_broker(lab, ["endpoint"], False)

    evs = [wire.event(id=c["id"], timeout=60) for c in cmds]
    assert [e["outcome"] for e in evs] == ["applied", "rejected", "applied"], evs
    assert "expired" in evs[1]["reason"]
    assert evs[0]["seq"] < evs[1]["seq"] < evs[2]["seq"]
    st = ep1.status()
    assert (st["state"], st["mode"], st["reason"]) == ("isolated", "standard", "queued")
    assert (st["policy"]["stored_version"], st["policy"]["enforced_version"]) == (1, 1)
    assert st["backend"]["enforcing"] is True


def test_an_acked_command_is_on_disk_and_survives_kill_9(lab, console, agents, wire):
    """Durable before acked: once the result event (sent after the ack) is seen, kill -9
    the agent; the state file on disk already holds the change and the broker holds no
    unacked message, so the restarted agent enforces it without a redelivery."""
    import json as _json
    import os
    import signal
    (ep1,) = agents(("ep1", "endpoint", "endpoint_sensor"))
    cmd = fmt.new_command("ep1", "isolate", {"strict": True, "reason": "durable"}, timedelta(hours=1))
    seq = wire.publish("cordon.v1.cmd.ep1", fmt.sign(cmd, fmt.load_private_key(console.key)))
    assert wire.event(id=cmd["id"])["outcome"] == "applied"
    ep1.kill(signal.SIGKILL)
    with open(os.path.join(ep1.config["state_dir"], "state.json")) as f:
        on_disk = _json.load(f)
    assert (on_disk["state"], on_disk["mode"], on_disk["reason"]) == ("isolated", "strict", "durable")
    c = wire.consumer("cordon-ep1")
    assert c["ack_floor"] >= seq and c["num_ack_pending"] == 0, c
    ep1.start()
    console.wait_subscribed(ep1, count=2)
    st = ep1.status()
    assert (st["state"], st["mode"], st["backend"]["enforcing"]) == ("isolated", "strict", True)
    assert len(ep1.audit_events("console_command_applied")) == 1   # not applied a second time
