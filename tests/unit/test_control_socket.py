"""The control socket with a real Unix socket and real peer credentials; the firewall
is the in-memory backend (the nftables path is covered by the integration tests)."""
import json
import os
import shutil
import socket
import tempfile
import threading

import pytest

from agent import client
from agent.config import parse_config
from agent.engine import Engine
from agent.errors import InvalidInput, NotPermitted
from agent.log import null_logger
from agent.server import ControlServer
from agent.store import Store
from tests.unit.memory_backend import MemoryBackend
from tests.users import NOBODY, as_user

POLICY = {"version": 2, "enabled": True, "outbound": [{"protocol": "tcp", "address": "203.0.113.20", "ports": "any"}]}


@pytest.fixture
def agent(tmp_path):
    run_dir = tempfile.mkdtemp(prefix="cordon-test-")  # reachable by other users, like /run/cordon
    os.chmod(run_dir, 0o755)
    config = parse_config({"state_dir": str(tmp_path / "state"), "control_socket": f"{run_dir}/c.sock",
                           "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}})
    backend = MemoryBackend()
    engine = Engine(config, Store(config.state_dir), backend, null_logger())
    engine.start()
    server = ControlServer(config.control_socket, engine, null_logger())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield config.control_socket, engine, backend
    server.close()
    shutil.rmtree(run_dir, ignore_errors=True)


def raw(path, data: bytes, shut=True) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    finally:
        s.close()
    return json.loads(buf)


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
    reply = raw(path, data)
    assert reply["ok"] is False and reply["error"]["code"] == code
    assert backend.installed is None and engine.state.state == "normal"
    assert client.call(path, "status")["state"] == "normal"


def test_ten_megabytes_is_refused(agent):
    path, *_ = agent
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        sent = 0
        block = b"x" * 65536
        try:
            while sent < 10 * 1024 * 1024:
                s.sendall(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent stopped reading: fine, but it must still say why
        try:
            reply = s.recv(65536)
        except ConnectionResetError:
            reply = b""
        # DESIGN 7: oversized input gets an error reply; never a silent drop.
        assert reply, "the agent dropped a 10 MB request without an error reply"
        assert json.loads(reply)["error"]["code"] == "bad_request"
    finally:
        s.close()
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
