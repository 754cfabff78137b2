"""Command order across the agent's two consumers (DESIGN §10): commands to one agent
(`cordon.v1.cmd.<id>`) and to the fleet (`cordon.v1.cmd.all`) are applied in the order the
broker stored them (stream sequence), whichever consumer delivers them: "release all" then
"isolate ep1" leaves ep1 isolated, "isolate all" then "release ep1" leaves it released.

The oracle is the published sequence itself (the broker's publish acks, in the order this
test sent them), replayed here: the last isolate/release addressed to an agent or to `all`
decides its state and mode. Checked on `status`, and with real packets at the end.
Rounds: connected, disconnected while published (broker away, then back but unreachable),
and with the agent stopped in between and restarted."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest

from agent.channel import wire as fmt
from tests.harness.lab import load_factor
from tests.harness.probe import ALLOWED, BLOCKED
from tests.integration.console_fixtures import (agents, block_broker, broker, console, lab, wait_audit,  # noqa: F401
                                                wire)

pytestmark = [pytest.mark.root, pytest.mark.slow]

AGENTS = {"ep1": "endpoint", "ep2": "endpoint2"}

# (target, action, strict): each round ends with a fleet-wide command directly followed by
# per-agent ones that contradict it, and the other way round.
ROUNDS = {
    "connected": [("all", "isolate", False), ("ep1", "release", False), ("all", "release", False),
                  ("ep1", "isolate", True), ("ep2", "isolate", False), ("all", "isolate", True),
                  ("ep2", "release", False), ("all", "release", False), ("ep1", "isolate", False)],
    "disconnected": [("ep1", "isolate", False), ("all", "release", False), ("ep2", "isolate", True),
                     ("all", "isolate", False), ("ep1", "release", False), ("ep2", "release", False),
                     ("all", "isolate", True), ("ep2", "release", False), ("all", "release", False),
                     ("ep1", "isolate", True)],
    "restarted": [("all", "isolate", False), ("ep2", "release", False), ("ep1", "release", False),
                  ("all", "release", False), ("ep2", "isolate", True), ("all", "isolate", True),
                  ("ep1", "release", False), ("ep2", "release", False), ("all", "release", False),
                  ("ep2", "isolate", False)],
}


def expected(published: list[tuple[int, dict]]) -> dict[str, tuple[str, str | None]]:
    """agent -> (state, mode) from DESIGN §1/§10 alone: apply the commands in stream order."""
    state = {a: ("normal", None) for a in AGENTS}
    for _seq, cmd in sorted(published, key=lambda p: p[0]):
        for a in AGENTS if cmd["agent"] == "all" else [cmd["agent"]]:
            if cmd["action"] == "release":
                state[a] = ("normal", None)
            else:
                state[a] = ("isolated", "strict" if cmd["args"].get("strict") else "standard")
    return state


def _publish(wire, key, round_: list) -> list[tuple[int, dict]]:
    out = []
    for target, action, strict in round_:
        args = {"strict": True} if strict else {}
        cmd = fmt.new_command(target, action, args | {"reason": f"order {len(out)}"}, timedelta(hours=1))
        out.append((wire.publish(fmt.command_subject(target), fmt.sign(cmd, key)), cmd))
    seqs = [s for s, _ in out]
    assert seqs == sorted(seqs), f"the broker stored the commands out of publish order: {seqs}"
    return out


def _wait_results(wire, published, timeout=90):
    """Until each agent sent a result event for every command addressed to it."""
    deadline = time.monotonic() + timeout * load_factor()
    for seq, cmd in published:
        want = list(AGENTS) if cmd["agent"] == "all" else [cmd["agent"]]
        got = wire.events_for(cmd["id"], want, max(0.0, deadline - time.monotonic()))
        assert set(got) == set(want), f"no result from {set(want) - set(got)} for seq {seq} {cmd['action']} {cmd['agent']}"
        assert all(ev["outcome"] == "applied" for ev in got.values()), got


def _check(eps, oracle, name):
    for agent_id, ep in eps.items():
        st = ep.status()
        assert (st["state"], st["mode"]) == oracle[agent_id], (
            f"{name}: {agent_id} is {st['state']}/{st['mode']}, the console's order says {oracle[agent_id]}")
        assert st["backend"]["enforcing"] is True, f"{name}: {agent_id}"


def test_fleet_and_agent_commands_apply_in_stream_order(lab, broker, console, agents, wire):
    eps = dict(zip(AGENTS, agents(*((a, h, "endpoint_sensor") for a, h in AGENTS.items()))))
    key = fmt.load_private_key(console.key)
    published: list[tuple[int, dict]] = []

    # 1. Connected: published back to back, faster than the agents apply them.
    published += _publish(wire, key, ROUNDS["connected"])
    _wait_results(wire, published)
    _check(eps, expected(published), "connected")

    # 2. Disconnected while published: the backlog on both consumers arrives at once.
    broker.kill()
    for ep in eps.values():
        wait_audit(ep, "console_disconnected", 1)
    block_broker(lab, AGENTS.values(), True)
    broker.start()
    try:
        round2 = _publish(wire, key, ROUNDS["disconnected"])
    finally:
        block_broker(lab, AGENTS.values(), False)
    published += round2
    _wait_results(wire, round2)
    _check(eps, expected(published), "disconnected")

    # 3. Agents stopped while published, then restarted.
    for ep in eps.values():
        ep.close()
    round3 = _publish(wire, key, ROUNDS["restarted"])
    published += round3
    for ep in eps.values():
        ep.start()
    for ep in eps.values():
        console.wait_subscribed(ep, count=2)
    _wait_results(wire, round3)
    oracle = expected(published)
    _check(eps, oracle, "restarted")

    # The final state is enforced: real packets from each endpoint to the outside.
    for agent_id, host in AGENTS.items():
        verdict = lab.probe(host, "outside", "tcp", 80).verdict
        assert verdict == (BLOCKED if oracle[agent_id][0] == "isolated" else ALLOWED), f"{agent_id}: {verdict}"
    # Each agent applied exactly the commands addressed to it, in stream order.
    for agent_id, ep in eps.items():
        applied = [e["seq"] for e in ep.audit_events("console_command_applied")]
        mine = [s for s, c in published if c["agent"] in ("all", agent_id)]
        assert applied == mine, f"{agent_id}: applied {applied}, published {mine}"


def test_an_older_agents_consumers_are_brought_to_one_at_a_time(lab, console, wire):
    """Consumers left by an agent before stream ordering (max_ack_pending 64, several
    messages in flight at once) are updated when the agent subscribes, so its deliveries
    come one at a time, lowest first; a backlog on both is then applied in stream order."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from agent.channel.runner import durable_name, ensure_stream
    from tests.harness.driver import Agent

    async def old_consumers():
        await ensure_stream(wire.js)
        for broadcast in (False, True):
            subject = fmt.command_subject("all" if broadcast else "ep1")
            await wire.js.add_consumer("CORDON_CMD", ConsumerConfig(
                durable_name=durable_name("ep1", broadcast), filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, ack_wait=15, max_ack_pending=64))
    wire.call(old_consumers())
    key = fmt.load_private_key(console.key)
    backlog = [("all", "isolate", False), ("ep1", "release", False), ("all", "isolate", True),
               ("ep1", "isolate", False), ("all", "release", False), ("ep1", "isolate", True)]
    published = []
    for target, action, strict in backlog:
        cmd = fmt.new_command(target, action, {"strict": True} if strict else {}, timedelta(hours=1))
        published.append((wire.publish(fmt.command_subject(target), fmt.sign(cmd, key)), cmd))
    ep1 = Agent(lab, config=console.agent_config("ep1"), host="endpoint")
    try:
        ep1.start()
        console.wait_subscribed(ep1)

        async def limits():
            return [(await wire.js.consumer_info("CORDON_CMD", durable_name("ep1", b))).config.max_ack_pending
                    for b in (False, True)]
        assert wire.call(limits()) == [1, 1]
        deadline = time.monotonic() + 60 * load_factor()
        for _seq, cmd in published:
            assert wire.events_for(cmd["id"], ["ep1"], max(0.0, deadline - time.monotonic())), cmd
        st = ep1.status()
        assert (st["state"], st["mode"]) == ("isolated", "strict"), st   # the last one published
        assert [e["seq"] for e in ep1.audit_events("console_command_applied")] == [s for s, _ in published]
    finally:
        ep1.close()
