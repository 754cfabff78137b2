"""The control channel on a Unix stream socket (Linux, macOS): see agent.control.

Any local user may connect; changes need root, checked on the peer's credentials as the
kernel reports them (agent.peercred: SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS), never
on anything the client says about itself. Admission is decided on the uid at accept, in the
accept loop, before a thread is spent or a byte is read.
"""
from __future__ import annotations

import os
import socket
import socketserver
from pathlib import Path
from typing import Callable

from agent import protocol
from agent.admission import Admission
from agent.control import REPLY_TIMEOUT_S, ControlCore
from agent import peercred
from agent.peers import UNKNOWN, Peer, unix_peer


def send_and_close(sock: socket.socket, msg: dict, timeout: float = REPLY_TIMEOUT_S) -> None:
    """Send one reply line, then close without a reset: unread input is drained first
    (closing a Unix socket with unread data makes the peer's recv fail with ECONNRESET)."""
    try:
        sock.settimeout(timeout)
        sock.sendall(protocol.encode(msg))
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        for _ in range(256):
            if not sock.recv(65536):
                break
    except OSError:
        pass


class _Handler(socketserver.BaseRequestHandler):
    server: "ControlServer"

    def handle(self) -> None:
        send_and_close(self.request, self.server.serve(self.request, self.server.peer_of(self.request)))


class ControlServer(ControlCore, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of local clients is queued, not refused (EAGAIN)

    def __init__(self, path: str, engine, log, admission: Admission | None = None, rejections=None,
                 peer: Callable[[socket.socket], peercred.Peer] | None = None) -> None:
        self._init_core(engine, log, admission, rejections)
        self._peer = peer or peercred.reader_for()  # this OS's credential reader
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if p.is_socket():
            if _answers(path):
                raise OSError(f"another agent is serving {path}")
            p.unlink()  # a stale socket of a previous (crashed) agent
        super().__init__(path, _Handler)
        os.chmod(path, 0o666)  # anyone may connect; privileges are checked per request

    # Runs in the accept loop, before a thread is spent or a byte is read.
    def verify_request(self, request, client_address) -> bool:
        why = self.admit(self.peer_of(request))
        if why is None:
            return True
        send_and_close(request, protocol.error("busy", why), timeout=0.05)
        return False

    def peer_of(self, request) -> Peer:
        try:
            return unix_peer(self._peer(request))
        except OSError:  # unreadable credentials: nobody, read-only
            return UNKNOWN

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        Path(self.server_address).unlink(missing_ok=True)


def _answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
