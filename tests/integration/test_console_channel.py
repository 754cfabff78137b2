"""The console channel end to end (DESIGN §10): real nats-server on the vendor host, real
agents in the lab's endpoints, the real `cordon-console` CLI. Expected outcomes come
from DESIGN §1/§10 (sensor-type table), checked on status, on the broker's consumer state,
on `nft` and with real packets."""
from __future__ import annotations

import json

import pytest

from tests.harness.probe import ALLOWED, BLOCKED
from tests.integration.console_fixtures import V1, V2, agents, broker, channel_tuple, console, lab, wire  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _ok(p, *agents_applied):
    assert p.returncode == 0, f"exit {p.returncode}: {p.stdout}{p.stderr}"
    for a in agents_applied:
        assert f"{a}: applied" in p.stdout, p.stdout


def _publish(console, tmp_path, doc, *extra):
    path = tmp_path / f"policy-{doc['version']}.json"
    path.write_text(json.dumps(doc))
    return console.run("policy", "publish", str(path), *extra)


def _acked(wire, agent_id):
    for durable in (f"cordon-{agent_id}", f"cordon-{agent_id}-all"):
        c = wire.consumer(durable)
        assert c["num_pending"] == 0 and c["num_ack_pending"] == 0, f"{durable}: {c}"


def test_channel_stays_up_through_isolate_policy_strict_release(lab, console, agents, wire, tmp_path):
    (ep1,) = agents(("ep1", "endpoint", "endpoint_sensor"))
    tuple0 = channel_tuple(lab, ep1)
    assert len(tuple0) == 1, tuple0
    steps = [
        ("isolate", lambda: console.run("isolate", "ep1", "--reason", "IR-17"), ("isolated", "standard")),
        ("policy v1", lambda: _publish(console, tmp_path, V1, "--agent", "ep1"), ("isolated", "standard")),
        ("strict", lambda: console.run("isolate", "ep1", "--strict"), ("isolated", "strict")),
        ("policy v2 while strict", lambda: _publish(console, tmp_path, V2), ("isolated", "strict")),
        ("release", lambda: console.run("release", "ep1"), ("normal", None)),
    ]
    for name, act, (state, mode) in steps:
        _ok(act(), "ep1")
        st = ep1.status()
        assert (st["state"], st["mode"]) == (state, mode), f"{name}: {st['state']} {st['mode']}"
        assert st["backend"]["enforcing"] is True, name
        assert channel_tuple(lab, ep1) == tuple0, f"{name}: the channel's TCP connection changed"
        _acked(wire, "ep1")
        blocked = lab.probe("endpoint", "outside", "tcp", 80).verdict
        assert blocked == (BLOCKED if state == "isolated" else ALLOWED), f"{name}: endpoint->outside {blocked}"
    assert len(ep1.audit_events("console_connected")) == 1
    assert not ep1.audit_events("console_disconnected") and not ep1.audit_events("console_reconnected")
    assert "cordon" not in ep1.nft_tables()


def test_sensor_types_through_the_console(lab, console, agents, tmp_path):
    es, sa = agents(("ep1", "endpoint", "endpoint_sensor"), ("ep2", "endpoint2", "security_agent"))
    _ok(_publish(console, tmp_path, V1), "ep1", "ep2")
    _ok(console.run("isolate", "all"), "ep1", "ep2")
    rmm_3389 = lambda host: lab.probe(host, "rmm", "tcp", 3389).verdict
    assert rmm_3389("endpoint") == BLOCKED and rmm_3389("endpoint2") == BLOCKED  # v1: port 22 only

    _ok(_publish(console, tmp_path, V2), "ep1", "ep2")     # "save settings in the console"
    fleet = console.fleet()
    assert (fleet["ep1"]["stored_version"], fleet["ep1"]["enforced_version"], fleet["ep1"]["pending_version"]) == (2, 2, None)
    assert (fleet["ep2"]["stored_version"], fleet["ep2"]["enforced_version"], fleet["ep2"]["pending_version"]) == (2, 1, 2)
    assert rmm_3389("endpoint") == ALLOWED, "endpoint_sensor: v2 enforced at once"
    assert rmm_3389("endpoint2") == BLOCKED, "security_agent: v2 pending until the next isolate"

    _ok(console.run("isolate", "ep2"), "ep2")
    fleet = console.fleet()
    assert (fleet["ep2"]["stored_version"], fleet["ep2"]["enforced_version"], fleet["ep2"]["pending_version"]) == (2, 2, None)
    assert rmm_3389("endpoint2") == ALLOWED
    for a, want in ((es, 2), (sa, 2)):
        st = a.status()
        assert st["policy"]["enforced_version"] == want and st["backend"]["enforcing"] is True

    _ok(console.run("release", "all"), "ep1", "ep2")
    assert {r["state"] for r in console.fleet().values()} == {"normal"}


def test_fleet_and_outcomes(console, agents, tmp_path):
    agents(("ep1", "endpoint", "endpoint_sensor"))
    p = console.run("fleet")
    assert p.returncode == 0 and "ep1" in p.stdout and "normal" in p.stdout, p.stdout
    stale = dict(V1, version=1)
    _ok(_publish(console, tmp_path, V1), "ep1")
    p = _publish(console, tmp_path, stale)
    assert p.returncode == 2 and "ep1: REJECTED (invalid)" in p.stdout and "stale" in p.stdout, p.stdout
    p = console.run("isolate", "ghost", timeout=1)
    assert p.returncode == 1 and "ghost: NO ACK" in p.stdout, p.stdout
    p = console.run("isolate", "bad id!")
    assert p.returncode == 2 and "agent" in p.stderr, p.stderr
