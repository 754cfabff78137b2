"""One agent per state dir, and a state dir only root can write (issue 14).

`acquire(state_dir)` takes an exclusive flock on `<state_dir>/agent.lock` (held for the
agent's life; the kernel drops it when the process dies, even on kill -9) and writes
the pid into it. A second agent gets AlreadyRunning naming the running pid.
On Windows the lock is a byte-range lock (msvcrt), also dropped by the kernel when the process
dies, and the state dir's safety is its ACL, set by the installer (platforms.windows.install)."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from agent.errors import CordonError

LOCK_FILE = "agent.lock"


class AlreadyRunning(CordonError):
    pass


class UnsafeStateDir(CordonError):
    pass


def check_state_dir(state_dir: str | Path) -> None:
    """Create the dir if missing; refuse one that another user could write or swap
    (owner not us, group/world writable, or a symlink)."""
    path = Path(state_dir)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
        st = os.lstat(path)
    except OSError as exc:
        raise UnsafeStateDir(f"state dir {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or _is_junction(path):
        raise UnsafeStateDir(f"state dir {path} is not a directory (a symlink is not accepted)")
    if sys.platform.startswith("win"):
        return   # no uid or mode bits: the installer's protected DACL (SYSTEM/Administrators write)
    if st.st_uid != os.geteuid():
        raise UnsafeStateDir(f"state dir {path} is owned by uid {st.st_uid}, not by this agent's uid {os.geteuid()}")
    if st.st_mode & 0o022:
        raise UnsafeStateDir(f"state dir {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                             "chmod go-w it")


def acquire(state_dir: str | Path) -> int:
    """The lock's fd (keep it open for the agent's life)."""
    path = Path(state_dir) / LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise AlreadyRunning(f"cannot open the agent lock {path}: {exc.strerror or exc}") from None
    try:
        _lock(fd)
    except BlockingIOError:
        try:
            pid = _read_pid(fd)
        finally:
            os.close(fd)
        raise AlreadyRunning(f"another agent (pid {pid}) is already running for state dir {state_dir}") from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock(fd: int) -> None:
    """An exclusive lock the kernel drops with the process; BlockingIOError if held."""
    if sys.platform.startswith("win"):
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    import fcntl
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:   # Windows: the locked byte cannot be read by another process
        return "unknown"


def _is_junction(path: Path) -> bool:
    """A Windows directory junction (a symlink by another name); never on POSIX."""
    return bool(getattr(os.path, "isjunction", lambda _p: False)(path))
