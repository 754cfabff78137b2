"""The control channel, whatever carries it: one request per connection, a thread each,
the line/JSON protocol of agent.protocol on top of a pluggable transport:
- a Unix stream socket (Linux, macOS): agent.server.ControlServer;
- a Windows named pipe (CPython has no AF_UNIX there): agent.pipe_server.PipeControlServer.

Any local user may ask for status; changes need a privileged peer (agent.peers), identified by
the OS (peer credentials, the pipe client's token), never by anything the client says.
Admission (agent.admission) is decided on the account at accept, before the body is read;
a request must arrive whole within one deadline; every request gets a reply line.
"""
from __future__ import annotations

import socket
import sys
import time

from agent import protocol
from agent.admission import Admission
from agent.errors import ApplyFailed, FieldError, InvalidInput, NotPermitted
from agent.log import excerpt
from agent.peers import Peer, may_change_state

REQUEST_DEADLINE_S = 5.0    # the whole request, however it is dribbled
REPLY_TIMEOUT_S = 5.0       # a client that does not read its reply does not hold a thread


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


def control_server(address: str, engine, log, rejections=None, platform: str = sys.platform,
                   api=None) -> ControlCore:
    r"""The control channel's transport for this platform (on Windows the config's
    control_socket is a pipe name, \\.\pipe\cordon by default)."""
    if platform.startswith("win"):
        from agent.pipe_server import PipeControlServer
        return PipeControlServer(address, engine, log, rejections=rejections, api=api)
    from agent.server import ControlServer
    return ControlServer(address, engine, log, rejections=rejections)
