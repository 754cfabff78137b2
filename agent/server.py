"""The control socket: a Unix stream socket, one request per connection, a thread each.

Any local user may ask for status; changes need root, checked on the peer's
credentials (SO_PEERCRED), never on anything the client says about itself.
"""
from __future__ import annotations

import os
import socket
import socketserver
import struct
import threading
from pathlib import Path

from agent import protocol
from agent.errors import ApplyFailed, FieldError, InvalidInput, NotPermitted

READ_TIMEOUT_S = 5.0        # a client that dribbles its request does not hold a thread for long
MAX_CLIENTS = 16


def peer_credentials(sock: socket.socket) -> dict:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return {"caller_pid": pid, "caller_uid": uid}


class _Handler(socketserver.BaseRequestHandler):
    server: "ControlServer"

    def handle(self) -> None:
        if not self.server.slots.acquire(blocking=False):
            self._reply(protocol.error("busy", "too many clients at once; try again"))
            return
        try:
            self._reply(self._serve())
        finally:
            self.server.slots.release()

    def _serve(self) -> dict:
        sock: socket.socket = self.request
        actor = peer_credentials(sock)
        try:
            raw = self._read(sock)
            cmd, args = protocol.decode_request(raw)
        except protocol.BadRequest as exc:
            self.server.log.warning("command_rejected", reason=str(exc), **actor)
            return protocol.error("bad_request", str(exc))
        if protocol.COMMANDS[cmd] and actor["caller_uid"] != 0:
            self.server.log.warning("command_rejected", command=cmd, reason="not permitted", **actor)
            return protocol.error("not_permitted", f"{cmd} needs root")
        try:
            return protocol.ok(self.server.dispatch(cmd, args, actor))
        except InvalidInput as exc:
            self.server.log.warning("command_rejected", command=cmd, reason=str(exc), **actor)
            return protocol.error("invalid", str(exc), [{"field": e.field, "reason": e.reason} for e in exc.errors])
        except NotPermitted as exc:
            self.server.log.warning("command_rejected", command=cmd, reason=str(exc), **actor)
            return protocol.error("not_permitted", str(exc))
        except ApplyFailed as exc:
            return protocol.error("failure", str(exc))
        except Exception as exc:  # the agent must keep answering whatever a request does
            self.server.log.error("command_failed", command=cmd, error=repr(exc), **actor)
            return protocol.error("failure", f"internal error: {exc.__class__.__name__}")

    def _read(self, sock: socket.socket) -> bytes:
        sock.settimeout(READ_TIMEOUT_S)
        buf = bytearray()
        try:
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > protocol.MAX_REQUEST_BYTES:
                    raise protocol.BadRequest(f"request larger than {protocol.MAX_REQUEST_BYTES} bytes")
        except socket.timeout:
            raise protocol.BadRequest("request incomplete (timed out)") from None
        return bytes(buf)

    def _reply(self, msg: dict) -> None:
        try:
            self.request.sendall(protocol.encode(msg))
        except OSError:
            pass


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 refuses (EAGAIN) a burst of local clients

    def __init__(self, path: str, engine, log) -> None:
        self.engine = engine
        self.log = log
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.release_gate = None  # with [console]: release needs a signed token (agent.channel)
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if p.is_socket():
            p.unlink()  # a stale socket of a previous (crashed) agent
        super().__init__(path, _Handler)
        os.chmod(path, 0o666)  # anyone may connect; privileges are checked per request

    def dispatch(self, cmd: str, args: dict, actor: dict) -> dict:
        e = self.engine
        if cmd == "status":
            return e.status()
        if cmd == "policy_show":
            s = e.state
            return {"stored": s.stored_policy.to_json() if s.stored_policy else None,
                    "isolation": s.isolation_policy.to_json() if s.isolation_policy else None}
        if cmd == "isolate":
            strict = args.get("strict", False)
            if not isinstance(strict, bool):
                raise InvalidInput(FieldError("strict", "must be true or false"))
            return e.isolate("strict" if strict else "standard", args.get("reason"), actor)
        if cmd == "release":
            if self.release_gate is not None:
                return self.release_gate(args, actor)
            if args.get("token") is not None:
                raise InvalidInput(FieldError("token", "no console key is configured on this agent; release needs no token"))
            return e.release(args.get("reason"), actor)
        if cmd == "policy_set":
            doc = args.get("policy")
            if not isinstance(doc, dict):
                raise InvalidInput(FieldError("policy", "must be a JSON object"))
            return e.set_policy(doc, actor)
        raise AssertionError(cmd)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        Path(self.server_address).unlink(missing_ok=True)

