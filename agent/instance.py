"""One agent per state dir, and a state dir only root can write (issue 14).

`acquire(state_dir)` takes an exclusive flock on `<state_dir>/agent.lock` (held for the
agent's life; the kernel drops it when the process dies, even on kill -9) and writes
the pid into it. A second agent gets AlreadyRunning naming the running pid."""
from __future__ import annotations

import fcntl
import os
import stat
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
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(f"state dir {path} is not a directory (a symlink is not accepted)")
    if st.st_uid != os.geteuid():
        raise UnsafeStateDir(f"state dir {path} is owned by uid {st.st_uid}, not by this agent's uid {os.geteuid()}")
    if st.st_mode & 0o022:
        raise UnsafeStateDir(f"state dir {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                             "chmod go-w it")


def acquire(state_dir: str | Path) -> int:
    """The lock's fd (keep it open for the agent's life)."""
    path = Path(state_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise AlreadyRunning(f"cannot open the agent lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise AlreadyRunning(f"another agent (pid {pid}) is already running for state dir {state_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
