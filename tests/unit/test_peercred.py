"""Peer credentials per OS (DESIGN §7). Linux: real sockets, real SO_PEERCRED. macOS cannot
run here: its getsockopt(SOL_LOCAL, LOCAL_PEERCRED) is faked with the bytes of a struct
xucred laid out by ctypes from the C declaration in <sys/ucred.h> (not by the code's own
struct format), and the control server is shown to apply the same rule with it: root may
change, every other uid may only read, unreadable credentials are nobody."""
import ctypes
import errno
import os
import shutil
import socket
import tempfile
import threading

import pytest

from agent import client
from agent.config import parse_config
from agent.engine import Engine
from agent.errors import NotPermitted
from agent.log import null_logger
from agent.peercred import darwin_peer, linux_peer, reader_for
from agent.server import ControlServer
from agent.store import Store
from tests.unit.memory_backend import MemoryBackend


class XUCred(ctypes.Structure):
    """struct xucred, <sys/ucred.h> (XUCRED_VERSION 0, NGROUPS 16)."""
    _fields_ = [("cr_version", ctypes.c_uint), ("cr_uid", ctypes.c_uint32), ("cr_ngroups", ctypes.c_short),
                ("cr_groups", ctypes.c_uint32 * 16)]


def xucred(uid, groups, version=0, ngroups=None) -> bytes:
    x = XUCred(version, uid, len(groups) if ngroups is None else ngroups)
    for i, g in enumerate(groups):
        x.cr_groups[i] = g
    return bytes(x)


class DarwinSocket:
    """getsockopt as macOS answers it for an AF_UNIX stream socket (SOL_LOCAL = 0)."""

    def __init__(self, cred: bytes, pid: int | None = 4242):
        self.cred, self.pid, self.asked = cred, pid, []

    def getsockopt(self, level, option, buflen):
        self.asked.append((level, option, buflen))
        if level != 0:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        if option == 0x001:       # LOCAL_PEERCRED
            return self.cred[:buflen]
        if option == 0x002 and self.pid is not None:  # LOCAL_PEERPID
            return self.pid.to_bytes(4, "little", signed=True)[:buflen]
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")


def test_the_xucred_layout_is_the_c_one():
    assert ctypes.sizeof(XUCred) == 76  # 4 + 4 + 2 (+2 padding) + 16 * 4


@pytest.mark.parametrize("uid, groups", [(0, [0, 1, 2, 3, 5, 8, 9, 12, 20, 29, 61, 80, 33, 98, 100, 204]),
                                         (501, [20, 12, 61, 79, 80, 81]), (4294967294, [4294967294])])
def test_darwin_credentials_are_read_from_struct_xucred(uid, groups):
    sock = DarwinSocket(xucred(uid, groups))
    peer = darwin_peer(sock)
    assert (peer.pid, peer.uid, peer.gid) == (4242, uid, groups[0])
    assert sock.asked[0] == (0, 0x001, 76)  # SOL_LOCAL, LOCAL_PEERCRED, sizeof(struct xucred)


def test_darwin_pid_is_optional():
    assert darwin_peer(DarwinSocket(xucred(501, [20]), pid=None)).pid is None


@pytest.mark.parametrize("cred, why", [
    (xucred(0, [0])[:40], "40 bytes"),                 # short answer
    (xucred(0, [0], version=1), "version 1"),          # a layout we do not know
    (xucred(0, [0], ngroups=0), "0 groups"),
    (xucred(0, [0], ngroups=17), "17 groups"),
])
def test_darwin_answers_that_are_not_an_xucred_are_refused(cred, why):
    with pytest.raises(OSError, match=why):
        darwin_peer(DarwinSocket(cred))


def test_reader_is_chosen_by_platform():
    assert reader_for("linux") is linux_peer and reader_for("darwin") is darwin_peer
    with pytest.raises(OSError, match="sunos5"):
        reader_for("sunos5")(None)


def test_linux_reads_real_credentials():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert tuple(linux_peer(a)) == (os.getpid(), os.geteuid(), os.getegid())
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- the server with macOS credentials

POLICY = {"version": 2, "enabled": True, "outbound": [{"protocol": "tcp", "address": "203.0.113.20", "ports": "any"}]}


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(cred: bytes):
        run_dir = tempfile.mkdtemp(prefix="cordon-peercred-")
        config = parse_config({"state_dir": str(tmp_path / f"state{len(servers)}"), "control_socket": f"{run_dir}/c.sock",
                               "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}})
        backend = MemoryBackend()
        engine = Engine(config, Store(config.state_dir), backend, null_logger())
        engine.start()
        server = ControlServer(config.control_socket, engine, null_logger(), peer=lambda _s: darwin_peer(DarwinSocket(cred)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, run_dir))
        return config.control_socket, backend
    yield start
    for server, run_dir in servers:
        server.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_darwin_root_may_change(serve):
    path, backend = serve(xucred(0, [0]))
    client.call(path, "policy_set", {"policy": POLICY})
    assert client.call(path, "isolate", {})["state"] == "isolated" and backend.installed is not None


@pytest.mark.parametrize("cred", [xucred(501, [20, 80]),      # an admin-group user without sudo
                                  xucred(0, [0], version=1)])  # unreadable: nobody
def test_darwin_others_may_read_but_not_change(serve, cred):
    path, backend = serve(cred)
    assert client.call(path, "status")["state"] == "normal"
    for cmd, args in [("isolate", {}), ("release", {}), ("policy_set", {"policy": POLICY})]:
        with pytest.raises(NotPermitted):
            client.call(path, cmd, args)
    assert backend.installed is None
