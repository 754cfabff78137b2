"""Suite-wide rules.

- The runner's pid is recorded; a forked child of the runner that reaches any pytest hook
  (it returned into the runner's code instead of ending with os._exit) is ended on the spot,
  with a message, before it can run a single test as a second runner.
- Every fork of the runner starts with default signal dispositions.
- Missing requirements: outside CI a root-only test is skipped when not root. In CI
  (CI=true; CI runs as root) a missing privilege, tool or library fails the run instead.
- `--update-golden`: the one, explicit way to rewrite golden files; tests never do it.
- Hypothesis never judges speed (no per-example deadline, no too-slow health check): the
  machine is shared and its load can be 80+, so those checks fail tests that are right.
"""
import os
import shutil
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "packaging" / "examples"
RUNNER_PID = os.getpid()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TOOLS = ("ip", "nft", "conntrack")  # what root tests run (Debian: iproute2, nftables, conntrack)


def _child_starts_clean() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


os.register_at_fork(after_in_child=_child_starts_clean)


def _escaped_child_guard() -> None:
    if os.getpid() != RUNNER_PID:
        os.write(2, f"\ntests: pid {os.getpid()}, a forked child of the test runner "
                    f"{RUNNER_PID}, returned into pytest; ending it (exit 70)\n".encode())
        os._exit(70)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    _escaped_child_guard()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    _escaped_child_guard()


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_post_finalizer(fixturedef, request):
    _escaped_child_guard()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    _escaped_child_guard()


def _stop_the_run(signum, frame):
    """SIGTERM/SIGHUP stop the run like Ctrl-C: KeyboardInterrupt, so every `with` block,
    lab and fixture on the way out tears down (pytest runs the pending finalizers)."""
    if os.getpid() != RUNNER_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite golden files from the current output (review the diff!)")


def missing_requirements() -> list[str]:
    why = []
    if os.geteuid() != 0:
        why.append("root (network namespaces, nftables)")
    why += [f"the `{t}` tool" for t in TOOLS if not shutil.which(t)]
    return why


def pytest_configure(config):
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_the_run)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when inherited ignored
    if IN_CI and missing_requirements():
        raise pytest.UsageError("CI=true but missing: " + ", ".join(missing_requirements()) +
                                "; CI must run every test (run scripts/setup.sh as root)")


def pytest_collection_modifyitems(config, items):
    why = missing_requirements()
    if not why:
        return
    skip = pytest.mark.skip(reason="needs " + ", ".join(why))
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def require(condition: bool, what: str) -> None:
    """At module level: skip the module when `what` is missing, except in CI, where a
    missing requirement is an error (a skipped module there would hide it)."""
    if condition:
        return
    if IN_CI:
        raise RuntimeError(f"CI=true but {what} is missing; CI must run this module")
    pytest.skip(f"{what} missing", allow_module_level=True)


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")
