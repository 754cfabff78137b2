"""Channel commands against the real engine on the in-memory backend: applied commands
change state, rejected ones change nothing; the local release gate needs a valid token."""
from __future__ import annotations

from datetime import timedelta

import pytest
from nacl.signing import SigningKey

from agent.channel import wire
from agent.channel.commands import Commands, local_release
from agent.channel.replay import ReplayGuard
from agent.config import parse_config
from agent.engine import Engine
from agent.errors import InvalidInput, NotPermitted
from agent.log import null_logger
from agent.store import Store
from tests.unit.memory_backend import MemoryBackend

KEY = SigningKey.generate()


@pytest.fixture
def cmds(tmp_path):
    cfg = parse_config({"state_dir": str(tmp_path), "vendor": {"endpoints": [
        {"address": "198.51.100.10", "protocol": "tcp", "ports": "443,4222"}]}})
    engine = Engine(cfg, Store(tmp_path), MemoryBackend(), null_logger())
    engine.start()
    return Commands(engine, KEY.verify_key, "ep1", ReplayGuard(tmp_path), null_logger())


def _body(agent="ep1", action="isolate", args=None, valid=timedelta(hours=1)):
    return wire.sign(wire.new_command(agent, action, args or {}, valid), KEY)


def test_applied_then_replayed(cmds):
    body = _body(args={"strict": True})
    ev = cmds.handle("cordon.v1.cmd.ep1", body, 1)
    assert ev["outcome"] == "applied" and cmds.engine.state.mode == "strict"
    again = cmds.handle("cordon.v1.cmd.ep1", body, 2)
    assert again["outcome"] == "rejected" and "already used" in again["reason"]


def test_a_redelivered_applied_command_is_a_duplicate_not_applied_again(cmds):
    """The broker delivers the same stream message again when its ack was lost (a
    cluster node gone): answered `applied`/`duplicate`, nothing applied a second time.
    A fresh delivery of a used id (num_delivered 1: someone published it again) is
    still a replay."""
    body = _body(args={"reason": "first"})
    assert cmds.handle("cordon.v1.cmd.all", _body(agent="all"), 1)["outcome"] == "applied"
    assert cmds.handle("cordon.v1.cmd.ep1", body, 2)["outcome"] == "applied"
    dup = cmds.handle("cordon.v1.cmd.ep1", body, 2, redelivered=True)
    assert (dup["outcome"], dup["code"], dup["status"]["state"]) == ("applied", "duplicate", "isolated")
    assert cmds.engine.state.reason == "first"
    again = cmds.handle("cordon.v1.cmd.ep1", body, 3)
    assert again["outcome"] == "rejected" and "already used" in again["reason"]
    fresh = _body(action="release")          # redelivered, but never applied: applied now
    assert cmds.handle("cordon.v1.cmd.ep1", fresh, 4, redelivered=True)["outcome"] == "applied"
    assert cmds.engine.state.state == "normal"


def test_an_applied_message_handed_out_as_a_first_delivery_is_a_duplicate(cmds):
    """A cluster node killed while a command is in flight: the consumer's new leader had
    not got the delivery count, so the broker hands the applied message out again with
    num_delivered 1. Same id, same stream sequence: the same message, not a replay and
    not "superseded" (the CI failure of stop 24)."""
    body = _body(agent="all", args={"reason": "IR"})
    assert cmds.handle("cordon.v1.cmd.all", body, 1)["outcome"] == "applied"
    dup = cmds.handle("cordon.v1.cmd.all", body, 1, redelivered=False)
    assert (dup["outcome"], dup["code"]) == ("applied", "duplicate")
    assert cmds.engine.state.reason == "IR"
    replay = cmds.handle("cordon.v1.cmd.all", body, 2)            # published again: stored later
    assert (replay["outcome"], replay["code"]) == ("rejected", "not_permitted") and "already used" in replay["reason"]


def test_an_older_command_after_a_newer_one_is_refused_and_changes_nothing(cmds):
    """Stream order (DESIGN §10): "release all" stored at 5, "isolate ep1" at 6. Once 6 is
    applied, 5 delivered late (a reset consumer, a redelivery) would undo it: refused."""
    assert cmds.handle("cordon.v1.cmd.ep1", _body(args={"reason": "six"}), 6)["outcome"] == "applied"
    late = cmds.handle("cordon.v1.cmd.all", _body(agent="all", action="release"), 5)
    assert (late["outcome"], late["code"]) == ("rejected", "not_permitted") and "superseded" in late["reason"]
    assert (cmds.engine.state.state, cmds.engine.state.reason) == ("isolated", "six")
    assert cmds.guard.applied_seq == 6
    again = cmds.handle("cordon.v1.cmd.ep1", _body(action="release"), 6, redelivered=True)
    assert again["outcome"] == "rejected" and cmds.engine.state.state == "isolated"  # same seq, not the same id
    assert cmds.handle("cordon.v1.cmd.all", _body(agent="all", action="release"), 7)["outcome"] == "applied"
    assert cmds.engine.state.state == "normal"
    assert ReplayGuard(cmds.guard.path.parent).applied_seq == 7      # on disk before the ack


def test_broadcast_on_the_own_subject_is_refused(cmds):
    ev = cmds.handle("cordon.v1.cmd.ep1", _body(agent="all"), 1)
    assert ev["outcome"] == "rejected" and cmds.engine.state.state == "normal"


def test_token_not_accepted_over_the_channel(cmds):
    token_body = wire.token_body(wire.make_token("ep1", timedelta(hours=1), KEY))
    ev = cmds.handle("cordon.v1.cmd.ep1", token_body, 1)
    assert ev["outcome"] == "rejected" and "args.token" in ev["reason"]


def test_local_release_gate(cmds):
    cmds.engine.isolate("standard", None, {})
    with pytest.raises(NotPermitted, match="release token"):
        local_release(cmds, None, {}, {})
    with pytest.raises(InvalidInput):
        local_release(cmds, None, {"token": "%%%"}, {})
    with pytest.raises(NotPermitted, match="not a release token"):
        body = _body(action="release")   # a signed channel release, not a token
        import base64
        local_release(cmds, None, {"token": base64.urlsafe_b64encode(body).decode()}, {})
    token = wire.make_token("ep1", timedelta(hours=1), KEY)
    assert local_release(cmds, None, {"token": token}, {"caller_uid": 0})["state"] == "normal"
    cmds.engine.isolate("standard", None, {})
    with pytest.raises(NotPermitted, match="already used"):
        local_release(cmds, None, {"token": token}, {})
    assert cmds.engine.state.state == "isolated"
