"""Asserting verbs in the manner of the NixOS test driver, for anything that runs commands
(the agent's CLI, a lab host): `succeed`, `fail`, `wait_until_succeeds`, `wait_until_fails`.

    agent.succeed("isolate", "--reason", "IR-1")
    agent.fail("release", exit="not permitted", match="token")
    lab.node("endpoint").wait_until_succeeds("nft", "list", "table", "inet", "cordon")

Each verb logs one line named after the call (logger `tests.harness`, nested under the
verb that called it), waits with a load-scaled deadline (tests.harness.waits) and, on its
last try, says what it saw. A wrong exit is `CordonWrong`; a command that cannot be run
or hangs is `HarnessError`. `fail` always names the failure it expects (an exit status,
by number or by its DESIGN name, and optionally text the output must contain): a bare
nonzero exit never passes, so a missing binary cannot read as "refused".
"""
from __future__ import annotations

import contextlib
import logging
import re
import shlex
import subprocess
import threading

from .errors import CordonWrong, HarnessError
from .waits import wait_until

log = logging.getLogger("tests.harness")
_depth = threading.local()


@contextlib.contextmanager
def section(title: str):
    """One log line for a verb, indented under the verb that called it."""
    depth = getattr(_depth, "n", 0)
    log.info("%s%s", "  " * depth, title)
    _depth.n = depth + 1
    try:
        yield
    finally:
        _depth.n = depth


def _outcome(proc: subprocess.CompletedProcess) -> str:
    out = (proc.stdout or "").strip()[-1500:]
    err = (proc.stderr or "").strip()[-1500:]
    return f"exit {proc.returncode}" + (f"\n  stdout: {out}" if out else "") + (f"\n  stderr: {err}" if err else "")


class Verbs:
    """Mixin: a class gives `_execute(args, timeout)` (a CompletedProcess, never raising on
    a nonzero exit) and `_describe(args)` (the command as a person would type it)."""

    EXIT_NAMES: dict[str, int] = {}
    TRY_TIMEOUT = 30  # seconds one try of a wait_until_* may take before it counts as hung

    def _execute(self, args: tuple, timeout: float) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def _describe(self, args: tuple) -> str:
        return shlex.join(args)

    def _run(self, args: tuple, timeout: float) -> subprocess.CompletedProcess:
        try:
            return self._execute(args, timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"`{self._describe(args)}` hung (killed after {exc.timeout:.0f} s)") from None
        except OSError as exc:
            raise HarnessError(f"`{self._describe(args)}` could not be run: {exc}") from None

    def _exit_code(self, exit) -> int:
        if isinstance(exit, int) and not isinstance(exit, bool):
            code = exit
        elif exit in self.EXIT_NAMES:
            code = self.EXIT_NAMES[exit]
        else:
            raise ValueError(f"fail: name the exit it expects (a number or one of {sorted(self.EXIT_NAMES)}), "
                             f"not {exit!r}")
        if code == 0:
            raise ValueError("fail: exit 0 is success; use succeed")
        return code

    def _failed_as(self, proc, code: int, match: str | None) -> str | None:
        """None if `proc` failed the way expected, else what was wrong."""
        if proc.returncode != code:
            return f"expected exit {code}{f' with {match!r}' if match else ''}, got {_outcome(proc)}"
        if match and not re.search(match, f"{proc.stdout}\n{proc.stderr}"):
            return f"exit {code} as expected, but no {match!r} in the output: {_outcome(proc)}"
        return None

    # --- the verbs ---------------------------------------------------------------
    def succeed(self, *args: str, timeout: float = 30) -> str:
        """Run the command; its stdout if it exits 0, else CordonWrong quoting it."""
        with section(f"succeed: {self._describe(args)}"):
            proc = self._run(args, timeout)
            if proc.returncode != 0:
                raise CordonWrong(f"`{self._describe(args)}` should succeed: {_outcome(proc)}")
            return proc.stdout

    def fail(self, *args: str, exit, match: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run the command; it must exit `exit` (and its output contain `match`, a regex)."""
        code = self._exit_code(exit)
        with section(f"fail (exit {code}): {self._describe(args)}"):
            proc = self._run(args, timeout)
            if (wrong := self._failed_as(proc, code, match)) is not None:
                raise CordonWrong(f"`{self._describe(args)}` should fail: {wrong}")
            return proc

    def wait_until_succeeds(self, *args: str, timeout: float = 30, step: float = 0.2) -> str:
        """Retry until the command exits 0 (deadline `timeout` x load); its stdout."""
        last = []

        def ok():
            last[:] = [self._run(args, self.TRY_TIMEOUT)]
            return last[0].returncode == 0
        with section(f"wait_until_succeeds: {self._describe(args)}"):
            wait_until(ok, timeout, f"`{self._describe(args)}` to succeed", step=step, error=CordonWrong,
                       seen=lambda: _outcome(last[0]))
            return last[0].stdout

    def wait_until_fails(self, *args: str, exit, match: str | None = None, timeout: float = 30,
                         step: float = 0.2) -> subprocess.CompletedProcess:
        """Retry until the command fails as `fail` expects (deadline `timeout` x load)."""
        code = self._exit_code(exit)
        last = []

        def failed():
            last[:] = [self._run(args, self.TRY_TIMEOUT)]
            return self._failed_as(last[0], code, match) is None
        with section(f"wait_until_fails (exit {code}): {self._describe(args)}"):
            wait_until(failed, timeout, f"`{self._describe(args)}` to fail", step=step, error=CordonWrong,
                       seen=lambda: self._failed_as(last[0], code, match))
            return last[0]
