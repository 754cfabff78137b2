"""Thin helpers over named network namespaces: run `ip`, run a command inside one,
and create sockets inside one from this process (setns on the current thread only).

The harness process itself stays in the machine's namespace; it only borrows a test
namespace for the instant a socket is created, and the socket keeps that namespace.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess

from .waits import scaled

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_fds: dict[str, int] = {}


def ip(*args: str, ns: str | None = None, input: str | None = None) -> str:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def add(ns: str) -> None:
    """Create a named namespace; with $CORDON_NETNS_LOG set (scripts/test.sh), also note
    its name there, so the run can check that everything it created is gone, without
    mistaking other people's namespaces on a shared machine for its own leftovers."""
    ip("netns", "add", ns)
    log = os.environ.get("CORDON_NETNS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(ns + "\n")


def exec_argv(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """`argv` in `ns`; `timeout`: seconds on an idle machine (a guard against a hang, x load)."""
    r = subprocess.run(exec_argv(ns, *argv), capture_output=True, text=True, timeout=scaled(timeout))
    if check and r.returncode != 0:
        raise RuntimeError(f"in {ns}: {' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def pids_in(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _ns_fd(ns: str) -> int:
    if ns not in _fds:
        _fds[ns] = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
    return _fds[ns]


def forget(ns: str) -> None:
    fd = _fds.pop(ns, None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def entered(ns: str):
    """Run the body with the current thread inside `ns`; always switch back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(_ns_fd(ns))
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def socket_in(ns: str, family: int, type: int, proto: int = 0) -> socket.socket:
    with entered(ns):
        return socket.socket(family, type, proto)
