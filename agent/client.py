"""The CLI side of the control socket."""
from __future__ import annotations

import json
import socket

from agent import protocol
from agent.errors import AgentNotRunning, CordonError, FieldError, InvalidInput, NotPermitted

TIMEOUT_S = 30.0


class RemoteFailure(CordonError):
    pass


def call(socket_path: str, cmd: str, args: dict | None = None) -> dict:
    """Send one request; return the result or raise the matching CordonError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    try:
        try:
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentNotRunning(f"the agent is not running (no answer on {socket_path})") from None
        except PermissionError:
            raise NotPermitted(f"not permitted to open {socket_path}") from None
        sock.sendall(protocol.encode({"v": protocol.VERSION, "cmd": cmd, "args": args or {}}))
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except socket.timeout:
        raise RemoteFailure(f"the agent did not answer within {TIMEOUT_S:.0f} s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise RemoteFailure("the agent sent a malformed reply") from None
    if reply.get("ok"):
        return reply["result"]
    err = reply.get("error", {})
    message = err.get("message", "unknown error")
    code = err.get("code")
    if code == "invalid":
        raise InvalidInput([FieldError(e["field"], e["reason"]) for e in err.get("errors", [])] or FieldError("", message))
    if code == "not_permitted":
        raise NotPermitted(message)
    raise RemoteFailure(message)
