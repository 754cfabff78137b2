"""The CLI side of the control channel (a Unix socket, or the named pipe on Windows)."""
from __future__ import annotations

import json
import socket
import sys
import time

from agent import protocol
from agent.errors import AgentNotRunning, CordonError, FieldError, InvalidInput, NotPermitted
from agent.peers import may_change_state, windows_peer

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


def _open_unix(path: str, deadline: float):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    try:
        _connect(sock, path, deadline)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_pipe(name: str, deadline: float, api=None):
    """The Windows transport: the named pipe, served only by a privileged process (anyone
    else holding the name could read our requests and forge replies)."""
    from platforms.windows.pipe import connect
    try:
        stream, server = connect(name, max(0.0, deadline - time.monotonic()), api=api)
    except FileNotFoundError:
        raise AgentNotRunning(f"the agent is not running (no answer on {name})") from None
    except PermissionError:
        raise NotPermitted(f"not permitted to open {name}") from None
    except TimeoutError:
        raise RemoteFailure(f"the agent did not accept a connection within {TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise RemoteFailure(f"cannot reach the agent on {name}: {exc}") from None
    if not may_change_state(windows_peer(server.pid, server.user_sid, server.sids_in_force)):
        stream.close()
        raise RemoteFailure(f"{name} is served by {server.user_sid} (pid {server.pid}), not by the agent "
                            "(SYSTEM or Administrators): refusing to talk to it")
    stream.settimeout(TIMEOUT_S)
    return stream


def open_channel(address: str, deadline: float, platform: str = sys.platform, api=None):
    """A connected stream to the agent over this platform's transport."""
    if platform.startswith("win"):
        return _open_pipe(address, deadline, api=api)
    return _open_unix(address, deadline)


def call(socket_path: str, cmd: str, args: dict | None = None, *, platform: str = sys.platform, api=None) -> dict:
    """Send one request; return the result or raise the matching CordonError."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        sock = open_channel(socket_path, deadline, platform, api)
    except socket.timeout:
        raise RemoteFailure(f"the agent did not answer within {TIMEOUT_S:.0f} s") from None
    buf = b""
    try:
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
