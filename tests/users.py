"""Run a piece of test code as another local user (for privilege checks)."""
from __future__ import annotations

import os

NOBODY = 65534


def as_user(uid: int, fn) -> int:
    """fn() in a forked child running as `uid`; its return value is the exit status
    (99 when it raised)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os._exit(fn())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
