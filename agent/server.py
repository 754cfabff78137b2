"""The control channel: one request per connection, a thread each, over a pluggable
transport with the same line/JSON protocol (agent.protocol) on top:
- a Unix stream socket (Linux, macOS): ControlServer;
- a Windows named pipe (CPython has no AF_UNIX there): PipeControlServer, over
  platforms.windows.pipe.

Any local user may ask for status; changes need a privileged peer (agent.peers), identified by
the OS (peer credentials, the pipe client's token), never by anything the client says.
Admission (agent.admission) is decided on the account at accept, before the body is read;
a request must arrive whole within one deadline; every request gets a reply line.
"""
from __future__ import annotations

import os
import socket
import socketserver
import sys
import time
from pathlib import Path

from agent import protocol
from agent.admission import Admission
from agent.errors import ApplyFailed, FieldError, InvalidInput, NotPermitted
from agent.log import excerpt
from agent.peers import UNKNOWN, Peer, may_change_state, unix_peer, windows_peer

REQUEST_DEADLINE_S = 5.0    # the whole request, however it is dribbled
REPLY_TIMEOUT_S = 5.0       # a client that does not read its reply does not hold a thread


def peer_credentials(sock: socket.socket) -> dict:
    return unix_peer(sock).actor()


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


class ControlCore:
    """What every transport shares: admission, the request's deadline, the permission rule,
    dispatch to the engine and the audit of refusals. A transport calls admit() at accept
    and serve() on the connection (anything with settimeout(s) and recv(n))."""

    def _init_core(self, engine, log, admission: Admission | None, rejections) -> None:
        self.engine = engine
        self.log = log
        self.admission = admission or Admission()
        self._rejections = rejections  # a log.RateLimited; None logs every rejection
        self.release_gate = None  # with [console]: release needs a signed token (agent.channel)

    def admit(self, peer: Peer) -> str | None:
        why = self.admission.admit(peer.account, may_change_state(peer))
        if why is not None:
            self.rejected(peer.actor(), None, f"busy: {why}")
        return why

    def serve(self, conn, peer: Peer) -> dict:
        """The reply to the one request on an admitted connection (admission left after)."""
        try:
            return self._serve(conn, peer)
        finally:
            self.admission.leave(peer.account, may_change_state(peer))

    def _serve(self, conn, peer: Peer) -> dict:
        try:
            raw = _read(conn, time.monotonic() + REQUEST_DEADLINE_S)
            peer = self.authority(conn, peer)
            cmd, args = protocol.decode_request(raw)
        except protocol.BadRequest as exc:
            self.rejected(peer.actor(), None, str(exc))
            return protocol.error("bad_request", str(exc))
        actor = peer.actor()
        if protocol.COMMANDS[cmd] and not may_change_state(peer):
            self.rejected(actor, cmd, "not permitted")
            return protocol.error("not_permitted", f"{cmd} needs root (Administrators or SYSTEM on Windows)")
        try:
            protocol.check_args(cmd, args)
            return protocol.ok(self.dispatch(cmd, args, actor))
        except InvalidInput as exc:
            self.rejected(actor, cmd, str(exc))
            return protocol.error("invalid", str(exc), [{"field": e.field, "reason": e.reason} for e in exc.errors])
        except NotPermitted as exc:
            self.rejected(actor, cmd, str(exc))
            return protocol.error("not_permitted", str(exc))
        except ApplyFailed as exc:
            return protocol.error("failure", str(exc))
        except Exception as exc:  # the agent must keep answering whatever a request does
            self.log.error("command_failed", command=cmd, error=excerpt(repr(exc)), **actor)
            return protocol.error("failure", f"internal error: {exc.__class__.__name__}: {excerpt(str(exc))}")

    def authority(self, conn, peer: Peer) -> Peer:
        """The identity that decides permissions, once the request is read (a transport
        whose accept-time identity is weaker overrides this)."""
        return peer

    def rejected(self, actor: dict, cmd: str | None, reason: str) -> None:
        fields = {"command": cmd, "reason": excerpt(reason), **actor}
        if self._rejections is not None:
            self._rejections.event(actor.get("caller_uid", actor.get("caller_sid")), "command_rejected", **fields)
        else:
            self.log.warning("command_rejected", **fields)

    def dispatch(self, cmd: str, args: dict, actor: dict) -> dict:
        e = self.engine
        if cmd == "status":
            return e.status()
        if cmd == "policy_show":
            s = e.state
            return {"stored": s.stored_policy.to_json() if s.stored_policy else None,
                    "isolation": s.isolation_policy.to_json() if s.isolation_policy else None,
                    **e.exceptions_view()}
        if cmd == "isolate":
            strict = args.get("strict", False)
            return e.isolate("strict" if strict else "standard", args.get("reason"), actor)
        if cmd == "release":
            if self.release_gate is not None:
                return self.release_gate(args, actor)
            if args.get("token") is not None:
                raise InvalidInput(FieldError("token", "no console key is configured on this agent; release needs no token"))
            return e.release(args.get("reason"), actor)
        if cmd == "policy_set":
            return e.set_policy(args["policy"], actor)
        raise AssertionError(cmd)


def _read(conn, deadline: float) -> bytes:
    buf = bytearray()
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout
            conn.settimeout(left)
            chunk = conn.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > protocol.MAX_REQUEST_BYTES:
                raise protocol.BadRequest(f"request larger than {protocol.MAX_REQUEST_BYTES} bytes")
    except socket.timeout:
        raise protocol.BadRequest(f"request incomplete after {REQUEST_DEADLINE_S:.0f} s") from None
    except OSError as exc:
        raise protocol.BadRequest(f"request unreadable: {exc.strerror or exc}") from None
    return bytes(buf)


class _Handler(socketserver.BaseRequestHandler):
    server: "ControlServer"

    def handle(self) -> None:
        send_and_close(self.request, self.server.serve(self.request, self.server.peer_of(self.request)))


class ControlServer(ControlCore, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of local clients is queued, not refused (EAGAIN)

    def __init__(self, path: str, engine, log, admission: Admission | None = None, rejections=None) -> None:
        self._init_core(engine, log, admission, rejections)
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
            return unix_peer(request)
        except OSError:
            return UNKNOWN

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        Path(self.server_address).unlink(missing_ok=True)


class PipeControlServer(ControlCore):
    """The same channel on a Windows named pipe (platforms.windows.pipe): the pipe's ACL lets
    local users connect, and the client's token decides what they may do."""

    def __init__(self, name: str, engine, log, admission: Admission | None = None, rejections=None,
                 api=None) -> None:
        from platforms.windows.pipe import PipeListener
        self._init_core(engine, log, admission, rejections)
        self.listener = PipeListener(name, api=api)   # raises if another process holds the name

    def serve_forever(self) -> None:
        self.listener.serve(self._accept, self._work)

    def _accept(self, conn) -> bool:
        """In the accept loop, on the client's process token (nothing read yet)."""
        conn.peer = _pipe_peer(conn.client)
        why = self.admit(conn.peer)
        if why is None:
            return True
        conn.reply_and_close(protocol.encode(protocol.error("busy", why)), 0.05)
        return False

    def _work(self, conn) -> None:
        conn.reply_and_close(protocol.encode(self.serve(conn, conn.peer)), REPLY_TIMEOUT_S)

    def authority(self, conn, peer: Peer) -> Peer:
        """The impersonation token, readable now that the request was read; admission's
        process-token identity keeps its account (the slot it holds), never lends privileges."""
        token = _pipe_peer(conn.client_token())
        return token if token.account == peer.account else Peer(peer.pid, peer.account)

    def close(self) -> None:
        self.listener.close()


def _pipe_peer(p) -> Peer:
    return windows_peer(p.pid, p.user_sid, p.sids_in_force) if p is not None else UNKNOWN


def control_server(address: str, engine, log, rejections=None, platform: str = sys.platform,
                   api=None) -> ControlCore:
    r"""The control channel's transport for this platform (on Windows the config's
    control_socket is a pipe name, \\.\pipe\cordon by default)."""
    if platform.startswith("win"):
        return PipeControlServer(address, engine, log, rejections=rejections, api=api)
    return ControlServer(address, engine, log, rejections=rejections)


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
