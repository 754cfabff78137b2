"""Run a piece of test code as another local user (for privilege checks)."""
from __future__ import annotations

import os

from tests.harness.forking import in_child, start_child

NOBODY = 65534


def _become(uid: int, fn):
    def run() -> int:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        return fn()
    return run


def as_user(uid: int, fn) -> int:
    """fn() in a forked child running as `uid`; its return value is the exit status
    (70 when it raised). The child never returns into the caller's code."""
    return in_child(_become(uid, fn))


def start_as_user(uid: int, fn) -> int:
    """The same, not waited for: the child's pid (the caller reaps it by pid)."""
    return start_child(_become(uid, fn))
