"""What `status` says about the console channel (DESIGN §10), against a real nats-server:
`channel.connected`, the server (scheme://address:port, the broker the harness started),
when a command last arrived; and the CORDON_STATUS entry refreshed every 30 s with no
change. Expected values come from the harness (the broker's address, the time a command
was published) and from `ss` in the agent's namespace, not from the agent."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest

from agent.channel import wire as fmt
from tests.harness.errors import CordonWrong
from tests.harness.waits import wait_until
from tests.integration.console_fixtures import agents, broker, channel_tuple, console, lab, wire  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _until(what, check, timeout=30):
    return wait_until(check, timeout, what, step=0.1, error=CordonWrong)


def _second(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def test_status_shows_the_connection_and_the_last_command(lab, broker, console, agents, wire):
    (ep1,) = agents(("ep1", "endpoint", "endpoint_sensor"))
    expected_server = f"nats://{broker.address}:{broker.port}"
    ch = ep1.status()["channel"]
    assert (ch["connected"], ch["server"], ch["agent_id"], ch["last_message_at"], ch["reconnects"]) == \
        (True, expected_server, "ep1", None, 0), ch
    (conn,) = channel_tuple(lab, ep1)                       # the kernel's view: one TCP connection
    assert conn.endswith(f"{broker.address}:{broker.port}"), conn
    shown = ep1.cli("status").stdout
    assert f"connected to {expected_server}" in shown and "no command yet" in shown, shown

    before = time.time()
    cmd = fmt.new_command("ep1", "isolate", {"reason": "status"}, timedelta(hours=1))
    wire.publish("cordon.v1.cmd.ep1", fmt.sign(cmd, fmt.load_private_key(console.key)))
    assert wire.event(id=cmd["id"])["outcome"] == "applied"
    after = time.time()
    last = ep1.status()["channel"]["last_message_at"]
    assert last is not None and _second(before) <= last <= _second(after), (before, last, after)
    assert wire.status("ep1")["channel"]["connected"] is True   # the bucket's copy says so too

    broker.kill()
    ch = _until("disconnected", lambda: (c := ep1.status()["channel"]) and not c["connected"] and c)
    assert (ch["server"], ch["servers"]) == (None, [expected_server]), ch
    assert "NOT connected" in ep1.cli("status").stdout
    broker.start()
    ch = _until("reconnected", lambda: (c := ep1.status()["channel"])["connected"] and c, timeout=60)
    # nats-py's own reconnect (counted), or a fresh connect after the old client gave up
    assert ch["reconnects"] >= 1 or len(ep1.audit_events("console_connected")) >= 2, ch
    assert ch["server"] == expected_server, ch


def test_status_without_a_running_agent_names_the_channel_as_down(lab, broker, console, agents):
    (ep1,) = agents(("ep1", "endpoint", "endpoint_sensor"))
    ep1.close()
    p = ep1.cli("status", "--json", check=False)
    assert p.returncode == 3, p.stderr
    import json
    ch = json.loads(p.stdout)["channel"]
    assert (ch["connected"], ch["problem"]) == (False, "the agent is not running"), ch


def test_status_bucket_is_refreshed_every_30_s_without_a_change(lab, console, agents, wire):
    (ep1,) = agents(("ep1", "endpoint", "endpoint_sensor"))
    first = _until("in the bucket", lambda: _bucket(wire, "ep1"))
    later = _until("refreshed", lambda: (d := _bucket(wire, "ep1")) and d["reported_at"] != first["reported_at"] and d,
                   timeout=30 * 2)
    gap = (fmt.parse_time(later["reported_at"], "t") - fmt.parse_time(first["reported_at"], "t")).total_seconds()
    assert gap >= 29, f"refreshed after {gap} s with nothing changed (every 30 s, DESIGN §10)"
    assert (later["state"], later["since"]) == (first["state"], first["since"])


def _bucket(wire, agent_id):
    try:
        return wire.status(agent_id)
    except Exception:   # not written yet
        return None
