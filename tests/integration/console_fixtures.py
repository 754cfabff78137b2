"""Fixtures for the console-channel tests: a lab with a second endpoint, a real
nats-server on the vendor host, a console key pair, and agents with [console]."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.harness.lab import DEFAULT_TOPOLOGY, Host

TOPOLOGY = DEFAULT_TOPOLOGY + (Host("endpoint2", "192.0.2.18/29", "2001:db8:3::18/64"),)

V1 = {"version": 1, "enabled": True, "inbound": [],
      "outbound": [{"name": "RMM over SSH", "protocol": "tcp", "address": "203.0.113.20", "ports": "22"}]}
V2 = {"version": 2, "enabled": True, "inbound": [],
      "outbound": [{"name": "RMM over SSH+RDP", "protocol": "tcp", "address": "203.0.113.20", "ports": "22, 3389"}]}


@pytest.fixture
def lab():
    from tests.harness import Lab
    with Lab(topology=TOPOLOGY) as lab:
        yield lab


@pytest.fixture
def broker(lab):
    from tests.harness.console import Broker
    b = Broker(lab).start()
    yield b
    b.kill()


@pytest.fixture
def console(lab, broker):
    from tests.harness.console import Console
    return Console(lab, broker).keygen()


@pytest.fixture
def agents(lab, console):
    """Factory: agents(("ep1", "endpoint", "endpoint_sensor"), ...) -> started, subscribed."""
    from tests.harness.driver import Agent
    started = []

    def make(*specs):
        out = []
        for agent_id, host, sensor in specs:
            a = Agent(lab, config=console.agent_config(agent_id, sensor), host=host)
            started.append(a)
            a.start()
            out.append(a)
        for a in out:
            console.wait_subscribed(a)
        return out
    yield make
    for a in started:
        a.close()


@pytest.fixture
def wire(lab, broker):
    from tests.harness.console import Wire
    with Wire(lab, broker) as w:
        yield w


def channel_tuple(lab, agent) -> list[str]:
    """The agent's established TCP connections to the broker, as `local -> peer` strings
    from `ss` in the agent's namespace (an independent view, not the agent's word)."""
    out = subprocess.run(["ip", "netns", "exec", lab.ns(agent.host), "ss", "-Htn", "state", "established",
                          "dport", "=", ":4222"], capture_output=True, text=True, check=True).stdout
    return sorted(" -> ".join(line.split()[-2:]) for line in out.splitlines() if line.strip())


def wait_audit(agent, event: str, count: int, timeout: float = 60) -> None:
    """Until the agent's audit log holds `count` events of kind `event`."""
    from tests.harness.lab import load_factor
    deadline = time.monotonic() + timeout * load_factor()
    while len(agent.audit_events(event)) < count:
        assert time.monotonic() < deadline, f"no {event} x{count} within {timeout}s:\n{agent.stderr_tail()}"
        time.sleep(0.05)


def block_broker(lab, hosts, on: bool) -> None:
    """In the router (a lab namespace): drop the hosts' packets to the broker port (on),
    or let them through again (off)."""
    if not on:
        lab.run("router", "nft", "delete", "table", "inet", "lab_block")
        return
    lab.run("router", "nft", "add", "table", "inet", "lab_block")
    lab.run("router", "nft", "add", "chain", "inet", "lab_block", "hold", "{ type filter hook forward priority 0; }")
    for host in hosts:
        lab.run("router", "nft", "add", "rule", "inet", "lab_block", "hold", "ip", "saddr", lab.addr(host, 4),
                "tcp", "dport", "4222", "drop")
