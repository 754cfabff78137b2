"""Fleet failover (DESIGN §10, fleet scale): five agents, each in its own namespace on the
fabric, against a 3-node nats-server cluster (CORDON_CMD and CORDON_STATUS with 3
replicas). The node most agents are connected to is killed while `cordon-console isolate
all` is in flight. Every agent must end isolated and enforcing, its audit log holding the
command applied exactly once, and the broker's ack record (each durable consumer's ack
floor) past the command: no command lost or applied twice. Real packets prove one
agent's isolation. Then the node comes back and `release all` completes."""
from __future__ import annotations

import collections

import pytest

from tests.harness.errors import CordonWrong
from tests.harness.waits import scaled, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

N = 5


@pytest.fixture
def fleet():
    from tests.harness.console import Wire
    from tests.harness.fleet import fleet_lab, start_agents
    with fleet_lab() as (lab, cluster, console, fabric):
        agents = start_agents(lab, console, fabric, [(f"ep{i}", "endpoint_sensor") for i in range(1, N + 1)])
        with Wire(lab, cluster) as w:
            yield lab, cluster, console, agents, w


def _applied(agent, cid: str) -> list[dict]:
    return [e for e in agent.audit_events("console_command_applied") if e.get("command_id") == cid]


def _settled(w, agents, durable_suffix: str, seq: int) -> None:
    """The broker's record: every agent's consumer acked up to `seq`, nothing left unacked."""
    def ok():
        for a in agents:
            c = w.consumer(f"cordon-{a.config['console']['agent_id']}{durable_suffix}")
            if c["ack_floor"] < seq or c["num_ack_pending"] or c["num_pending"]:
                return False
        return True
    wait_until(ok, 60, "every consumer acked", error=CordonWrong)


def test_node_killed_during_isolate_all_loses_nothing_and_applies_once(fleet):
    lab, cluster, console, agents, w = fleet
    ids = [a.config["console"]["agent_id"] for a in agents]
    # Subscribed means listed: `isolate all` targets the agents the fleet lists.
    assert all(w.reported(aid) is not None for aid in ids), {aid: w.reported(aid) for aid in ids}
    ep1 = agents[0]
    assert lab.probe(ep1.host, "outside", "tcp", 80).verdict == "ALLOWED"   # before: open

    # the node most agents hold their channel on
    # (the audit names the server as scheme://host:port, credentials never included)
    nodes = collections.Counter(a.audit_events("console_connected")[-1]["server"].rsplit("/", 1)[-1]
                                for a in agents)
    victim = next(i for i, n in enumerate(cluster.nodes) if f"{n.address}:{n.port}" == nodes.most_common(1)[0][0])

    cli = console.popen("isolate", "all", "--reason", "IR-fleet", timeout=scaled(60))
    cid, _ = w.command_seen(timeout=30)
    cluster.kill(victim)                                   # while the command is in flight
    out, err = cli.communicate(timeout=scaled(120))

    evs = w.events_for(cid, ids, timeout=60)
    for a in agents:
        aid = a.config["console"]["agent_id"]
        wait_until(lambda: _applied(a, cid), 60, f"{aid} applied {cid}", error=CordonWrong)
        st = a.status()
        assert (st["state"], st["reason"], st["backend"]["enforcing"]) == ("isolated", "IR-fleet", True), (aid, st)
    # the broker's ack record, not the console's summary
    seq = next(iter(evs.values()))["seq"] if evs else None
    assert seq is not None, f"no result event at all; console said:\n{out}\n{err}"
    _settled(w, agents, "-all", seq)
    for a in agents:   # applied exactly once, even if the broker redelivered it (then: console_command_redelivered)
        assert len(_applied(a, cid)) == 1, a.audit_events("console_command_applied")
        assert len([e for e in a.audit_events("console_command_rejected") if e.get("command_id") == cid]) == 0
    assert cli.returncode == 0, f"cordon-console isolate all exited {cli.returncode}:\n{out}\n{err}"
    assert all(f"{i}: " in out for i in ids), out

    # real packets: ep1 is cut off from the outside host, its vendor flow still open
    assert lab.probe(ep1.host, "outside", "tcp", 80).verdict == "BLOCKED"
    assert lab.probe(ep1.host, "vendor", "tcp", 443).verdict == "ALLOWED"

    cluster.restart(victim)
    cluster.ready()
    p = console.run("release", "all", timeout=scaled(60), wait=180)
    assert p.returncode == 0, f"release all exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    rid = p.stdout.split()[1]   # `release <id> -> all`
    for a in agents:
        assert len(_applied(a, rid)) == 1
        assert a.status()["state"] == "normal"
    assert lab.probe(ep1.host, "outside", "tcp", 80).verdict == "ALLOWED"
