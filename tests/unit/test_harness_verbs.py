"""The harness's own waits and asserting verbs must be able to fail, and fail the right
way: a wrong exit is CordonWrong, a command that cannot run is HarnessError, `fail`
never passes on a bare nonzero exit, and a wrong table raises with the whole table."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.harness import waits
from tests.harness.errors import CordonWrong, HarnessError
from tests.harness.probe import ALLOWED, BLOCKED, ERROR, Probe, Result
from tests.harness.table import Comparison, expect_table
from tests.harness.verbs import Verbs


class Local(Verbs):
    """Runs `python -c CODE` here: the smallest runner for the verbs."""

    EXIT_NAMES = {"not permitted": 4}

    def _execute(self, args, timeout):
        return subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=timeout)


class Missing(Verbs):
    def _execute(self, args, timeout):
        return subprocess.run(["/nonexistent/cordon-test-binary", *args], capture_output=True, text=True)


EXIT = "import sys; print({out!r}); sys.stderr.write({err!r}); sys.exit({code})"


def test_load_factor_scales_deadlines(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0 * (os.cpu_count() or 1), 0, 0))
    assert waits.load_factor() == 8.0 and waits.scaled(2) == 16.0
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0, 0))
    assert waits.load_factor() == 1.0
    d = waits.Deadline(5)
    assert 4 < d.left() <= 5 and not d.expired and "5 s (x1.0 for load)" == str(d)


def test_wait_until_returns_the_value_and_names_what_it_saw_last():
    seen = iter(range(100))
    assert waits.wait_until(lambda: next(seen) >= 3 and "done", 5, "count") == "done"
    with pytest.raises(HarnessError, match=r"never: not within 0.1 s .*last seen: still no"):
        waits.wait_until(lambda: None, 0.1, "never", seen=lambda: "still no")
    with pytest.raises(CordonWrong):
        waits.wait_until(lambda: False, 0.05, "never", error=CordonWrong)


def test_wait_until_gives_up_at_once_when_told_it_cannot_happen():
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match="gave up waiting: it exited"):
        waits.wait_until(lambda: False, 60, "agent ready", abort=lambda: "it exited")
    assert time.monotonic() - t0 < 30  # not the deadline: fail-fast (a guard, not a verdict)


def test_wait_until_retries_only_the_named_exceptions():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return True
    assert waits.wait_until(flaky, 5, "connect", retry_on=(ConnectionError,))
    with pytest.raises(ZeroDivisionError):
        waits.wait_until(lambda: 1 / 0, 5, "boom", retry_on=(ConnectionError,))


def test_succeed_returns_stdout_and_quotes_a_failure():
    assert Local().succeed(EXIT.format(out="hi", err="", code=0)).strip() == "hi"
    with pytest.raises(CordonWrong, match=r"(?s)should succeed: exit 1.*stderr: bad"):
        Local().succeed(EXIT.format(out="", err="bad", code=1))


def test_fail_needs_the_named_exit_and_text():
    refused = EXIT.format(out="", err="release refused: token required", code=4)
    assert Local().fail(refused, exit="not permitted", match="token").returncode == 4
    assert Local().fail(refused, exit=4).returncode == 4
    with pytest.raises(CordonWrong, match="expected exit 2"):
        Local().fail(refused, exit=2)                       # another nonzero exit is not "refused"
    with pytest.raises(CordonWrong, match="no 'expired' in the output"):
        Local().fail(refused, exit=4, match="expired")
    with pytest.raises(CordonWrong, match="expected exit 4, got exit 0"):
        Local().fail(EXIT.format(out="", err="", code=0), exit=4)
    for unnamed in (None, "refused", 0, True):
        with pytest.raises(ValueError):
            Local().fail(refused, exit=unnamed)             # a bare nonzero exit never passes


def test_a_command_that_cannot_run_is_the_harness_s_fault():
    with pytest.raises(HarnessError, match="could not be run"):
        Missing().succeed("x")
    with pytest.raises(HarnessError, match="could not be run"):
        Missing().fail("x", exit=1)
    with pytest.raises(HarnessError, match="hung"):
        Local().succeed("import time; time.sleep(30)", timeout=0.2)


def test_wait_until_succeeds_and_fails_retry_and_report_the_last_try(tmp_path):
    flag = tmp_path / "flag"
    code = f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 3)"
    with pytest.raises(CordonWrong, match=r"(?s)to succeed: not within 0.3 s.*last seen: exit 3"):
        Local().wait_until_succeeds(code, timeout=0.3, step=0.05)
    flag.touch()
    Local().wait_until_succeeds(code, timeout=5, step=0.05)
    with pytest.raises(CordonWrong, match=r"(?s)to fail: not within 0.3 s.*expected exit 3, got exit 0"):
        Local().wait_until_fails(code, exit=3, timeout=0.3, step=0.05)
    flag.unlink()
    assert Local().wait_until_fails(code, exit=3, timeout=5, step=0.05).returncode == 3


def _comparison(observed: dict) -> Comparison:
    probes = {Probe("endpoint", "vendor", "tcp", 443, 4): ALLOWED, Probe("endpoint", "outside", "tcp", 22, 4): BLOCKED}
    return Comparison(probes, [Result(p, observed.get(p, v), "why") for p, v in probes.items()], "t")


def test_expect_table_raises_with_the_whole_table():
    ok = _comparison({})
    assert expect_table(ok) is ok
    leak = _comparison({Probe("endpoint", "outside", "tcp", 22, 4): ALLOWED})
    with pytest.raises(CordonWrong) as e:
        expect_table(leak)
    text = str(e.value)
    assert text == leak.render() and "MISMATCH endpoint->outside tcp/22 v4: expected BLOCKED, observed ALLOWED" in text
    assert "IPv4" in text and "correct: 1, incorrect: 1" in text
    unknown = _comparison({Probe("endpoint", "outside", "tcp", 22, 4): ERROR})
    with pytest.raises(HarnessError, match="could not tell"):
        expect_table(unknown)
