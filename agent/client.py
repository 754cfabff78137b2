"""The CLI side of the control socket."""
from __future__ import annotations

import json
import socket
import time

from agent import protocol
from agent.errors import AgentNotRunning, CordonError, FieldError, InvalidInput, NotPermitted

TIMEOUT_S = 30.0


class RemoteFailure(CordonError):
    pass


class AgentBusy(RemoteFailure):
    """The agent refused the connection for now (too many clients or requests)."""


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    delay = 0.005
    while True:
        try:
            sock.connect(path)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentNotRunning(f"the agent is not running (no answer on {path})") from None
        except PermissionError:
            raise NotPermitted(f"not permitted to open {path}") from None
        except BlockingIOError:  # the listen backlog is full: wait for the agent to accept
            if time.monotonic() + delay > deadline:
                raise RemoteFailure(f"the agent did not accept a connection within {TIMEOUT_S:.0f} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def call(socket_path: str, cmd: str, args: dict | None = None) -> dict:
    """Send one request; return the result or raise the matching CordonError."""
    deadline = time.monotonic() + TIMEOUT_S
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    buf = b""
    try:
        _connect(sock, socket_path, deadline)
        try:
            sock.sendall(protocol.encode({"v": protocol.VERSION, "cmd": cmd, "args": args or {}}))
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent answered before reading (e.g. busy): its reply is queued
        while b"\n" not in buf:  # one reply line; what follows it does not matter
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        raise RemoteFailure(f"the agent did not answer within {TIMEOUT_S:.0f} s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(buf.split(b"\n", 1)[0])
        if not isinstance(reply, dict):
            raise ValueError
    except ValueError:
        raise RemoteFailure("the agent sent no reply or a malformed one") from None
    if reply.get("ok"):
        return reply["result"]
    err = reply.get("error", {})
    message = err.get("message", "unknown error")
    code = err.get("code")
    if code == "invalid":
        raise InvalidInput([FieldError(e["field"], e["reason"]) for e in err.get("errors", [])] or FieldError("", message), "input")
    if code == "bad_request":
        raise InvalidInput(FieldError("", message), "input")
    if code == "not_permitted":
        raise NotPermitted(message)
    if code == "busy":
        raise AgentBusy(f"the agent is busy: {message}")
    raise RemoteFailure(message)
