"""The guardian: a second process that holds its own generation of the same WinDivert
handles, so that the agent's death (kill -9, a crash, a stop) never lifts isolation.

WinDivert filters live in handles of the process that opened them (Windows removes them
when it exits; eBPFDivert after its 3 s heartbeat). A packet must pass every DROP handle,
so two processes holding the same plan enforce exactly that plan, and either one alone
still does. The agent and the guardian restart each other: the agent's read-back reports
a guardian that is missing or out of step (digest None: the engine logs tamper_detected
and re-applies, and apply() starts a new guardian); the guardian keeps enforcing while the
agent is down, and a restarted agent adopts it (same plan: nothing changes).

Files in the agent's state dir:
  windivert-plan.json      what the guardian must enforce (written by the agent, durable);
                           removed on release: the guardian closes its handles and exits
  windivert-guardian.json  {"pid", "digest"}: what the guardian has open (written by it)
  windivert-guardian.lock  held (flock) by the live guardian: its liveness, not its pid

    python -m platforms.windivert.guardian --state-dir DIR
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from platforms.durable import remove_durable, write_atomic
from platforms.plan import Plan

PLAN_FILE = "windivert-plan.json"
STATUS_FILE = "windivert-guardian.json"
LOCK_FILE = "windivert-guardian.lock"
POLL_S = 0.2           # how often the guardian looks at the plan file and its own handles


class GuardianLink:
    """The agent's side: hand the guardian a plan, see whether it holds it, start it."""

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir)
        self._started: subprocess.Popen | None = None   # reaped once it exits (no zombie)

    def hand_over(self, plan: Plan) -> None:
        write_atomic(self.dir / PLAN_FILE, json.dumps(plan.to_json(), sort_keys=True).encode(), 0o600)

    def withdraw(self) -> None:
        remove_durable(self.dir / PLAN_FILE)

    def alive(self) -> bool:
        if self._started is not None and self._started.poll() is not None:
            self._started = None
        return _lock_held(self.dir / LOCK_FILE)

    def status(self) -> dict | None:
        """What the live guardian says it holds; None when no guardian runs."""
        if not self.alive():
            return None
        try:
            return json.loads((self.dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {"pid": None, "digest": None}

    def ensure(self) -> None:
        """Start a guardian unless one runs (in its own session: a signal to the agent's
        process group does not reach it; it inherits the agent's network namespace)."""
        if self.alive():
            return
        kwargs = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP}
        self._started = subprocess.Popen([sys.executable, "-m", "platforms.windivert.guardian", "--state-dir", str(self.dir)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, close_fds=True,
                                         cwd=str(Path(__file__).resolve().parents[2]), **kwargs)

    def wait_holding(self, digest: str | None, timeout: float) -> bool:
        """Until the guardian holds `digest` (None: until it has gone)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if (st is None) if digest is None else (st is not None and st.get("digest") == digest):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S / 2)


def _lock_held(path: Path) -> bool:
    """Whether some process holds the guardian's lock (a dead process holds nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if os.name != "posix":  # pragma: no cover - Windows: msvcrt locks are mandatory, try one byte
            import msvcrt
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return True
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            return False
        import fcntl
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _take_lock(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.name != "posix":  # pragma: no cover
            import msvcrt
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def run(state_dir: str) -> int:
    from platforms.windivert.backend import WinDivertBackend  # the same handles as the agent's
    d = Path(state_dir)
    lock = _take_lock(d / LOCK_FILE)
    if lock is None:
        return 0   # another guardian holds the plan
    # A stop request from anyone but root's kill -9 is ignored: only the withdrawn plan ends it.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    backend = WinDivertBackend(role="guardian")
    held: str | None = None
    while True:
        try:
            doc = json.loads((d / PLAN_FILE).read_text())
        except FileNotFoundError:
            break      # withdrawn: release
        except (OSError, ValueError):
            doc = None   # a torn or unreadable file: keep what is in force
        try:
            if doc is not None:
                plan = Plan.from_json(doc)
                if plan.digest() != held or backend.read_back().digest != held:
                    backend.apply(plan)   # a new plan, or our own handles lost (re-attach)
                    held = plan.digest()
                    write_atomic(d / STATUS_FILE, json.dumps({"pid": os.getpid(), "digest": held}).encode())
        except Exception:  # noqa: BLE001 - whatever failed, what is open stays open (fail closed)
            pass
        time.sleep(POLL_S)
    backend.clear()
    remove_durable(d / STATUS_FILE)
    os.close(lock)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(prog="cordon-windivert-guardian")
    ap.add_argument("--state-dir", required=True)
    args = ap.parse_args()
    code = 1
    try:
        code = run(args.state_dir)
    except OSError as exc:   # no such state dir, not ours to write: say so, change nothing
        print(f"cordon-windivert-guardian: state dir {args.state_dir}: {exc.strerror or exc}", file=sys.stderr)
        code = 2
    finally:
        os._exit(code)


if __name__ == "__main__":
    main()
