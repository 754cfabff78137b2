r"""The control channel on the Windows named pipe, against the fake OS API: the agent's real
server and client code (agent.server, agent.client, agent.protocol unchanged) over
platforms.windows.pipe, with the fake's own access check deciding who may open and add
instances, and client tokens the fake hands out as the OS would. Expectations from DESIGN
§2/§7: SYSTEM and Administrators change state, Users read status, everything else nothing."""
import threading

import pytest

from agent import client
from agent.config import parse_config
from agent.engine import Engine
from agent.errors import NotPermitted
from agent.log import null_logger
from agent.peers import Peer, may_change_state, windows_peer
from agent.pipe_server import PipeControlServer
from agent.store import Store
from platforms.windows import acl
from platforms.windows.pipe import PipeListener, peer_of
from tests.unit import fake_winapi as fw
from tests.unit.memory_backend import MemoryBackend

PIPE = r"\\.\pipe\cordon-test"


@pytest.fixture
def world():
    return fw.World()


@pytest.fixture
def agent(world, tmp_path):
    config = parse_config({"state_dir": str(tmp_path / "state"), "control_socket": "/unused",
                           "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}})
    backend = MemoryBackend()
    engine = Engine(config, Store(config.state_dir), backend, null_logger())
    engine.start()
    server = PipeControlServer(PIPE, engine, null_logger(), api=world.process(fw.SYSTEM))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield engine, backend
    server.close()
    t.join(timeout=30)
    assert not t.is_alive()


def call(world, token, cmd, args=None):
    return client.call(PIPE, cmd, args, platform="win32", api=world.process(token))


# -- the pipe's ACL, judged by the fake's access check --------------------------------------
def test_pipe_acl_grants_exactly_what_design_says():
    sd = fw.parse_sddl(acl.PIPE_SDDL)
    assert sd.protected
    rw = fw.GENERIC_READ | fw.GENERIC_WRITE
    for who in (fw.SYSTEM, fw.ELEVATED_ADMIN):
        assert fw.access_check(sd, who, rw) and fw.access_check(sd, who, fw.FILE_CREATE_PIPE_INSTANCE)
    for who in (fw.USER, fw.FILTERED_ADMIN):   # may ask (read status), never add an instance
        assert fw.access_check(sd, who, acl.PIPE_CLIENT_ACCESS)
        assert not fw.access_check(sd, who, fw.FILE_CREATE_PIPE_INSTANCE)
        assert not fw.access_check(sd, who, fw.GENERIC_WRITE)
        assert not fw.access_check(sd, who, 0x40000 | 0x80000)   # WRITE_DAC, WRITE_OWNER
    assert not fw.access_check(sd, fw.ANONYMOUS, acl.PIPE_CLIENT_ACCESS)


# -- who may change state: one rule for both transports ---------------------------------------
@pytest.mark.parametrize("token,privileged", [(fw.SYSTEM, True), (fw.ELEVATED_ADMIN, True),
                                              (fw.FILTERED_ADMIN, False), (fw.USER, False), (fw.ANONYMOUS, False)])
def test_token_decision(token, privileged):
    from platforms.windows.abi import TokenIdentity
    p = peer_of(TokenIdentity(token.pid, token.user, token.groups))
    assert may_change_state(windows_peer(p.pid, p.user_sid, p.sids_in_force)) is privileged


def test_same_rule_for_unix_credentials():
    assert may_change_state(Peer(1, 0, frozenset({"uid:0"})))
    assert not may_change_state(Peer(1, 1000, frozenset({"uid:1000"})))
    assert not may_change_state(Peer(None, None))


# -- the channel end to end over the fake pipe -----------------------------------------------
def test_users_read_status_and_only_admins_and_system_change_state(world, agent):
    engine, backend = agent
    assert call(world, fw.USER, "status")["state"] == "normal"
    for who in (fw.USER, fw.FILTERED_ADMIN):
        with pytest.raises(NotPermitted):
            call(world, who, "isolate", {"strict": True})
    assert engine.state.state == "normal" and backend.installed is None
    assert call(world, fw.ELEVATED_ADMIN, "isolate", {"strict": True})["state"] == "isolated"
    assert backend.installed is not None
    with pytest.raises(NotPermitted):
        call(world, fw.USER, "release")
    assert call(world, fw.USER, "status")["state"] == "isolated"
    assert call(world, fw.SYSTEM, "release")["state"] == "normal"


class Recorder:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((event, fields))


def test_the_audit_names_the_caller_by_sid(world, agent):
    engine, _ = agent
    engine.log = Recorder()
    call(world, fw.ELEVATED_ADMIN, "isolate", {})
    isolated = [f for e, f in engine.log.events if e == "isolated"]
    assert isolated and isolated[0]["caller_sid"] == fw.ELEVATED_ADMIN.user
    assert isolated[0]["caller_pid"] == fw.ELEVATED_ADMIN.pid


def test_permissions_come_from_the_token_the_client_opened_with(world, agent):
    """An administrator's process whose thread impersonates a user (a broker acting for that
    user) gets the user's rights: the impersonation token decides, not the process token."""
    engine, _ = agent
    broker = world.process(fw.ELEVATED_ADMIN)
    broker.thread_token = fw.USER
    with pytest.raises(NotPermitted):
        client.call(PIPE, "isolate", {}, platform="win32", api=broker)
    assert engine.state.state == "normal"
    assert client.call(PIPE, "status", {}, platform="win32", api=broker)["state"] == "normal"


def test_anonymous_cannot_even_open_the_pipe(world, agent):
    with pytest.raises(NotPermitted):
        call(world, fw.ANONYMOUS, "status")


def test_bad_input_gets_the_protocol_error_reply(world, agent):
    api = world.process(fw.USER)
    h = api.open_pipe(PIPE, acl.PIPE_CLIENT_ACCESS, 5)
    api.write_pipe(h, b'{"v": 1, "cmd": "status", "args": {}, "x": 1}\n', 5)
    reply = b""
    while b"\n" not in reply:
        chunk = api.read_pipe(h, 65536, 10)
        assert chunk, "the agent closed without a reply"
        reply += chunk
    api.close_handle(h)
    assert b'"code":"bad_request"' in reply and b"unknown request key" in reply


def test_many_sequential_clients_each_get_an_instance(world, agent):
    for _ in range(20):
        assert call(world, fw.USER, "status")["state"] == "normal"


def test_clients_that_leave_at_once_do_not_stop_the_accept_loop(world, agent):
    for _ in range(5):
        api = world.process(fw.USER)
        api.close_handle(api.open_pipe(PIPE, acl.PIPE_CLIENT_ACCESS, 10))
    assert call(world, fw.USER, "status")["state"] == "normal"


def test_agent_down_is_agent_not_running(world):
    from agent.errors import AgentNotRunning
    with pytest.raises(AgentNotRunning):
        call(world, fw.USER, "status")


# -- squatting: nobody else may hold or share the name --------------------------------------
def test_the_agent_refuses_a_name_someone_else_holds(world, tmp_path):
    squatter = PipeListener(PIPE, api=world.process(fw.USER))
    try:
        with pytest.raises(OSError, match="another process"):
            PipeListener(PIPE, api=world.process(fw.SYSTEM))
    finally:
        squatter.close()


def test_a_user_cannot_add_an_instance_to_the_agents_pipe(world, agent):
    with pytest.raises(fw.FakeWinError) as exc:
        world.process(fw.USER).create_pipe(PIPE, "D:(A;;GA;;;WD)", first=False)
    assert exc.value.code == fw.ERROR_ACCESS_DENIED


def test_the_client_refuses_a_pipe_served_by_an_unprivileged_process(world):
    squatter = PipeListener(PIPE, api=world.process(fw.USER))
    t = threading.Thread(target=squatter.serve, args=(lambda c: False, lambda c: None), daemon=True)
    t.start()
    try:
        with pytest.raises(client.RemoteFailure, match="not by the agent"):
            call(world, fw.ELEVATED_ADMIN, "isolate", {})
    finally:
        squatter.close()
        t.join(timeout=30)


def test_the_windows_code_path_imports_without_af_unix_fcntl_or_sighup():
    """CPython on Windows has no AF_UNIX, no socketserver.UnixStreamServer, no fcntl, no SIGHUP,
    no O_DIRECTORY/O_NOFOLLOW/O_CLOEXEC: what `cordon run` and the CLI load there must import
    without them, and the state and audit writes must work without those flags."""
    import subprocess
    import sys
    from pathlib import Path
    code = (
        "import sys, socket, socketserver, signal\n"
        "import psutil  # its Linux module needs AF_UNIX; its Windows one does not\n"
        "del socket.AF_UNIX; del socketserver.UnixStreamServer; del signal.SIGHUP\n"
        "sys.modules['fcntl'] = None\n"
        "import agent.cli, agent.daemon, agent.winservice, agent.pipe_server, agent.client, agent.instance\n"
        "import platforms.windows.install, platforms.windows.service, platforms.windows.pipe\n"
        "import os, pathlib, tempfile\n"
        "for flag in ('O_DIRECTORY', 'O_NOFOLLOW', 'O_CLOEXEC'): delattr(os, flag)  # none on Windows\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "from platforms.durable import write_atomic; write_atomic(d / 'state.json', b'{}')\n"
        "from agent.log import AuditFile; AuditFile(d / 'logs' / 'audit.log', 1 << 20).reopen()\n"
        "from agent.paths import paths_for\n"
        "print(paths_for('win32', {}).control_socket)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == r"\\.\pipe\cordon"
