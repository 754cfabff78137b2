"""The tests' one raw client for the agent's control socket (DESIGN §7), for what
`agent.client` would never send (garbage, a half request, 10 MB, a flood), plus the
in-memory agent serving a real socket and the unprivileged abusers of the abuse tests
and the control benchmark.

    with memory_agent(tmp_path) as (path, engine, backend): exchange(path, request("status"))
    send_raw(path, os.urandom(8192))        # bytes back; b"" is silence (the caller judges)
    with abusers(path, 20): client.call(path, "isolate", {})
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time

from agent import protocol
from tests.harness.waits import scaled
from tests.users import NOBODY, start_as_user


def request(cmd: str, args: dict | None = None, **extra) -> bytes:
    """One well-formed request line (extra top-level fields for the malformed cases)."""
    return protocol.encode({"v": 1, "cmd": cmd, "args": args or {}, **extra})


def send_raw(path: str, data: bytes, timeout: float = 15, shut: bool = True) -> bytes:
    """Send `data` (then half-close, unless `shut` is False), read until a reply line or
    the agent closes. A broken pipe on sending (the agent answered early and stopped
    reading) or a reset after the reply is not an error: what came back is returned.
    `timeout` (x load) guards a hang."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(scaled(timeout))
    s.connect(path)
    try:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while b"\n" not in buf:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        return buf
    finally:
        s.close()


def exchange(path: str, data: bytes, timeout: float = 15) -> dict:
    """The agent's one reply line to `data`, decoded; silence or a reset without a reply
    line fails (DESIGN §7: any input gets an error reply naming the problem)."""
    buf = send_raw(path, data, timeout)
    assert b"\n" in buf, f"no reply line, got {buf[:200]!r}"
    return json.loads(buf.split(b"\n", 1)[0])


@contextlib.contextmanager
def memory_agent(state_dir=None, prefix: str = "cordon-test-"):
    """An Engine on the in-memory backend behind a real ControlServer, its socket in a
    directory other users can reach (like /run/cordon; removed on the way out, with the
    state when no `state_dir` is given); yields (socket path, engine, backend). The
    firewall is not under test here, the channel is."""
    from agent.config import parse_config
    from agent.engine import Engine
    from agent.log import null_logger
    from agent.server import ControlServer
    from agent.store import Store
    from tests.unit.memory_backend import MemoryBackend
    run_dir = tempfile.mkdtemp(prefix=prefix)
    os.chmod(run_dir, 0o755)
    try:
        config = parse_config({"state_dir": str(state_dir or f"{run_dir}/state"), "control_socket": f"{run_dir}/c.sock",
                               "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp",
                                                         "ports": "443"}]}})
        backend = MemoryBackend()
        engine = Engine(config, Store(config.state_dir), backend, null_logger())
        engine.start()
        server = ControlServer(config.control_socket, engine, null_logger())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield config.control_socket, engine, backend
        finally:
            server.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --- unprivileged abusers (DESIGN §7), each a child process as another uid -------------

def _connected(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def hold_idle(path: str, n: int, ready: int, stop: int) -> int:
    """n connections that never send a byte; a byte on fd `ready` once they are all
    connected, held until a byte arrives on fd `stop`."""
    socks = [_connected(path) for _ in range(n)]
    os.write(ready, b"x")
    os.read(stop, 1)
    for s in socks:
        s.close()
    return 0


def flood(path: str, n: int, ready: int, stop: int) -> int:
    """n connections, each dribbling one byte every 0.2 s (defeats a per-recv timeout),
    reconnecting when the agent cuts one; `ready` and `stop` as for hold_idle."""
    socks = [_connected(path) for _ in range(n)]
    os.write(ready, b"x")
    os.set_blocking(stop, False)
    while True:
        try:
            if os.read(stop, 1):
                return 0
        except BlockingIOError:
            pass
        for i, s in enumerate(socks):
            try:
                s.send(b" ")
            except OSError:  # cut by the agent: reconnect and keep at it
                s.close()
                socks[i] = s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(path)
                except OSError:
                    pass
        time.sleep(0.2)  # the flood's pace, not a synchronisation


@contextlib.contextmanager
def abusers(path: str, n: int, uid: int = NOBODY):
    """n idle and n flooding clients, as `uid`, connected before the body runs; stopped
    and reaped (by pid) on the way out."""
    kids = []
    try:
        for abuse in (hold_idle, flood):
            ready_r, ready_w = os.pipe()
            stop_r, stop_w = os.pipe()
            pid = start_as_user(uid, lambda a=abuse: a(path, n, ready_w, stop_r))
            kids.append((pid, stop_w))
            assert os.read(ready_r, 1) == b"x", f"{abuse.__name__}: the abuser did not start"
            for fd in (ready_r, ready_w, stop_r):
                os.close(fd)
        yield
    finally:
        for pid, stop_w in kids:
            os.write(stop_w, b"x")
            os.close(stop_w)
        for pid, _ in kids:
            os.waitpid(pid, 0)
