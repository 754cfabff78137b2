"""The control socket with a real Unix socket and real peer credentials; the firewall
is the in-memory backend (the nftables path is covered by the integration tests)."""
import json
import os
import socket
import threading

import pytest

from agent import client
from agent.errors import InvalidInput, NotPermitted
from tests.control_client import exchange, memory_agent, send_raw
from tests.users import NOBODY, as_user

POLICY = {"version": 2, "enabled": True, "outbound": [{"protocol": "tcp", "address": "203.0.113.20", "ports": "any"}]}


@pytest.fixture
def agent(tmp_path):
    with memory_agent(tmp_path / "state") as served:  # its socket reachable by other users, like /run/cordon
        yield served


def test_round_trip(agent):
    path, engine, backend = agent
    assert client.call(path, "status")["state"] == "normal"
    client.call(path, "policy_set", {"policy": POLICY})
    st = client.call(path, "isolate", {"strict": False, "reason": "case 9"})
    assert st["state"] == "isolated" and st["backend"]["enforcing"] and backend.installed is not None
    assert client.call(path, "policy_show")["stored"]["version"] == 2


@pytest.mark.parametrize("data, code", [
    (os.urandom(4096), "bad_request"),
    (b'{"v": 1, "cmd": "isol', "bad_request"),
    (b'{"v": 1, "cmd": "format_disk"}\n', "bad_request"),
    (b'{"v": 2, "cmd": "status"}\n', "bad_request"),
    (b'{"cmd": "status"}\n', "bad_request"),
    (b'[]\n', "bad_request"),
    (b'{"v": 1, "cmd": "status", "args": []}\n', "bad_request"),
    (b'{"v": 1, "cmd": "isolate", "args": {"strict": "yes"}}\n', "invalid"),
    (b'{"v": 1, "cmd": "isolate", "args": {"reason": "a\\nb"}}\n', "invalid"),
    (b'{"v": 1, "cmd": "policy_set", "args": {"policy": "x"}}\n', "invalid"),
    (b'{"v": 1, "cmd": "policy_set", "args": {"policy": {"version": 1, "enabled": true}}}\n', "invalid"),
])
def test_garbage_gets_an_error_and_changes_nothing(agent, data, code):
    path, engine, backend = agent
    reply = exchange(path, data)
    assert reply["ok"] is False and reply["error"]["code"] == code
    assert backend.installed is None and engine.state.state == "normal"
    assert client.call(path, "status")["state"] == "normal"


def test_ten_megabytes_is_refused(agent):
    path, *_ = agent
    # The agent may stop reading early: fine, but it must still say why.
    reply = send_raw(path, b"x" * (10 * 1024 * 1024), shut=False)
    # DESIGN 7: oversized input gets an error reply; never a silent drop.
    assert reply, "the agent dropped a 10 MB request without an error reply"
    assert json.loads(reply)["error"]["code"] == "bad_request"
    assert client.call(path, "status")["state"] == "normal"


def test_a_silent_client_does_not_block_others(agent):
    path, *_ = agent
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(path)
    try:
        for _ in range(5):
            assert client.call(path, "status")["state"] == "normal"
    finally:
        silent.close()


def test_many_clients_at_once(agent):
    path, *_ = agent
    results = []
    threads = [threading.Thread(target=lambda: results.append(client.call(path, "status")["state"])) for _ in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == ["normal"] * 12


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
@pytest.mark.parametrize("cmd, args", [("isolate", {}), ("release", {}), ("policy_set", {"policy": POLICY})])
def test_non_root_may_read_but_not_change(agent, cmd, args):
    path, engine, backend = agent

    def attempt():
        if client.call(path, "status")["state"] != "normal":
            return 10
        try:
            client.call(path, cmd, args)
        except NotPermitted:
            return 4
        return 0

    assert as_user(NOBODY, attempt) == 4
    assert backend.installed is None and engine.state.stored_policy is None


def test_invalid_policy_reply_names_the_field(agent):
    path, *_ = agent
    bad = {"version": 1, "enabled": True, "outbound": [{"protocol": "tcp", "address": "0.0.0.0/0", "ports": "any"}]}
    with pytest.raises(InvalidInput) as info:
        client.call(path, "policy_set", {"policy": bad})
    assert info.value.errors[0].field == "outbound[0].address"
