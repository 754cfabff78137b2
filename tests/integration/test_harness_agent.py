"""The real agent driven through the harness: the story of issue 4, end to end through
the CLI, for both sensor types, plus kill -9 + restart and tamper. Tables are compared
with tests.harness.expect (computed from config + policy, not from the agent)."""
from __future__ import annotations

import pytest

from tests.harness.demo import POLICY_V1, POLICY_V2
from tests.harness.scenarios import Story

pytestmark = pytest.mark.root


def _assert_ok(step, lab):
    assert step.ok, step.render(lab)


@pytest.mark.parametrize("agent_config", [{"sensor_type": "endpoint_sensor"},
                                          {"sensor_type": "security_agent"}])
def test_story(lab, agent, agent_config):
    story = Story(lab, agent, policies=[POLICY_V1, POLICY_V2])
    _assert_ok(story.baseline(), lab)
    _assert_ok(story.policy_update(POLICY_V1), lab)
    _assert_ok(story.isolate(reason="IR-7"), lab)
    step = story.policy_update(POLICY_V2)  # live or pending, by sensor type
    _assert_ok(step, lab)
    if agent_config["sensor_type"] == "security_agent":
        assert story.model.enforced["version"] == 1
        _assert_ok(story.isolate(), lab)  # the pending policy takes effect now
    _assert_ok(story.strict(), lab)
    _assert_ok(story.kill_restart(), lab)
    _assert_ok(story.tamper(), lab)
    _assert_ok(story.release(), lab)
    first, last = story.steps[0].comparison, story.steps[-1].comparison
    assert [(r.probe, r.result.verdict) for r in last.rows] == [(r.probe, r.result.verdict) for r in first.rows]
    events = [e["event"] for e in agent.audit_events()]
    for kind in ("isolated", "released", "policy_stored"):
        assert kind in events, events
    isolated = agent.audit_events("isolated")
    assert any(e.get("reason") == "IR-7" for e in isolated), isolated
