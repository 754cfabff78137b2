"""The control socket: a Unix stream socket, one request per connection, a thread each.

Any local user may ask for status; changes need root, checked on the peer's
credentials as the kernel reports them (agent.peercred: SO_PEERCRED on Linux,
LOCAL_PEERCRED on macOS), never on anything the client says about itself.
Admission (agent.admission) is decided on the uid at accept, before the body is read;
a request must arrive whole within one deadline; every request gets a reply line.
"""
from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Callable

from agent import protocol
from agent.admission import Admission
from agent.errors import ApplyFailed, FieldError, InvalidInput, NotPermitted
from agent.log import excerpt
from agent.peercred import Peer, reader_for

REQUEST_DEADLINE_S = 5.0    # the whole request, however it is dribbled
REPLY_TIMEOUT_S = 5.0       # a client that does not read its reply does not hold a thread


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
        actor = self.server.actor_of(self.request)
        try:
            reply = self._serve(actor)
        finally:
            self.server.admission.leave(actor["caller_uid"])
        send_and_close(self.request, reply)

    def _serve(self, actor: dict) -> dict:
        try:
            raw = self._read(self.request, time.monotonic() + REQUEST_DEADLINE_S)
            cmd, args = protocol.decode_request(raw)
        except protocol.BadRequest as exc:
            self.server.rejected(actor, None, str(exc))
            return protocol.error("bad_request", str(exc))
        if protocol.COMMANDS[cmd] and actor["caller_uid"] != 0:
            self.server.rejected(actor, cmd, "not permitted")
            return protocol.error("not_permitted", f"{cmd} needs root")
        try:
            protocol.check_args(cmd, args)
            return protocol.ok(self.server.dispatch(cmd, args, actor))
        except InvalidInput as exc:
            self.server.rejected(actor, cmd, str(exc))
            return protocol.error("invalid", str(exc), [{"field": e.field, "reason": e.reason} for e in exc.errors])
        except NotPermitted as exc:
            self.server.rejected(actor, cmd, str(exc))
            return protocol.error("not_permitted", str(exc))
        except ApplyFailed as exc:
            return protocol.error("failure", str(exc))
        except Exception as exc:  # the agent must keep answering whatever a request does
            self.server.log.error("command_failed", command=cmd, error=excerpt(repr(exc)), **actor)
            return protocol.error("failure", f"internal error: {exc.__class__.__name__}: {excerpt(str(exc))}")

    def _read(self, sock: socket.socket, deadline: float) -> bytes:
        buf = bytearray()
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                sock.settimeout(left)
                chunk = sock.recv(65536)
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


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of local clients is queued, not refused (EAGAIN)

    def __init__(self, path: str, engine, log, admission: Admission | None = None, rejections=None,
                 peer: Callable[[socket.socket], Peer] | None = None) -> None:
        self.engine = engine
        self._peer = peer or reader_for()  # this OS's credential reader
        self.log = log
        self.admission = admission or Admission()
        self._rejections = rejections  # a log.RateLimited; None logs every rejection
        self.release_gate = None  # with [console]: release needs a signed token (agent.channel)
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
        actor = self.actor_of(request)
        why = self.admission.admit(actor["caller_uid"])
        if why is None:
            return True
        self.rejected(actor, None, f"busy: {why}")
        send_and_close(request, protocol.error("busy", why), timeout=0.05)
        return False

    def actor_of(self, request) -> dict:
        try:
            peer = self._peer(request)
            return {"caller_pid": peer.pid, "caller_uid": peer.uid}
        except OSError:  # unreadable credentials: nobody, read-only
            return {"caller_pid": None, "caller_uid": -1}

    def rejected(self, actor: dict, cmd: str | None, reason: str) -> None:
        fields = {"command": cmd, "reason": excerpt(reason), **actor}
        if self._rejections is not None:
            self._rejections.event(actor["caller_uid"], "command_rejected", **fields)
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
