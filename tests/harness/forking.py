"""The one way test code forks: the child resets inherited signal handlers, runs its
function, and always ends with os._exit, so it can never return into its parent's code
(pytest's loop, a `with Lab()` block, a fixture's teardown)."""
from __future__ import annotations

import os
import signal
import sys
import traceback

INHERITED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start_child(fn) -> int:
    """fn() in a forked child, not waited for: its pid. Its int return value is the exit
    status (70 when it raised); the caller reaps it (os.waitpid) by that pid."""
    pid = os.fork()
    if pid == 0:
        status = 70
        try:
            for sig in INHERITED:
                signal.signal(sig, signal.SIG_DFL)
            status = int(fn() or 0)
        except BaseException:
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(status)
    return pid


def in_child(fn) -> int:
    """fn() in a forked child (start_child); waits for it and returns its exit status."""
    return os.waitstatus_to_exitcode(os.waitpid(start_child(fn), 0)[1])
