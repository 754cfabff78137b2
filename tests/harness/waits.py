"""Every wait in the tests, in one place: deadlines that guard against a hang, scaled with
the machine's load, and polls that end on the event they wait for.

A deadline is never a verdict: it only stops a wait that would otherwise hang. Its
seconds are what an idle 2-core machine needs with room to spare; `load_factor()`
stretches them on a busy one (several engineers and CI share the machine).

    wait_until(lambda: agent.ready(), 15, "agent ready", abort=agent.exit_reason)
    d = Deadline(30)              # for condition-variable waits: cond.wait(d.left())
    subprocess.run(argv, timeout=scaled(60))
"""
from __future__ import annotations

import os
import time

from .errors import HarnessError

STEP = 0.05  # seconds between two tries of a poll: not a synchronisation, only a pace


def load_factor() -> float:
    """How much slower than an idle 2-core machine this one is right now (1 to 8): the
    1-minute load average per CPU. Deadlines that guard against a hang scale with it."""
    try:
        per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 1.0
    return max(1.0, min(per_cpu, 8.0))


def scaled(seconds: float) -> float:
    """`seconds` on an idle machine, stretched for the load right now."""
    return seconds * load_factor()


class Deadline:
    """A point in time `seconds` x load from now; str() says how it was computed."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.factor = seconds, load_factor()
        self.end = time.monotonic() + seconds * self.factor

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def __str__(self) -> str:
        return f"{self.seconds:g} s (x{self.factor:.1f} for load)"


def wait_until(check, seconds: float, what: str, abort=None, step: float = STEP,
               error: type[Exception] = HarnessError, retry_on: tuple = (), seen=None):
    """Call `check()` until it returns something truthy and return that. `abort()`, if
    given, is asked before every try: a message from it fails the wait at once (what is
    awaited can no longer happen: the process died). After the deadline one last try,
    then `error` naming `what`, the deadline and what the last try saw: `seen()` if
    given, else the last value (or exception of `retry_on`)."""
    deadline = Deadline(seconds)
    last: object = None
    while True:
        if abort is not None and (why := abort()):
            raise error(f"{what}: gave up waiting: {why}")
        final = deadline.expired
        try:
            last = check()
        except retry_on as exc:
            last = exc
        else:
            if last:
                return last
        if final:
            raise error(f"{what}: not within {deadline}; last seen: {seen() if seen else repr(last)}"[:4000])
        time.sleep(min(step, deadline.left()) or step)


def wait_for_clock(t: float) -> None:
    """Until the wall clock has passed `t` (an expiry time the test set): an event in
    itself, so not scaled."""
    while (left := t - time.time()) >= 0:
        time.sleep(min(left + 0.01, 0.1))
