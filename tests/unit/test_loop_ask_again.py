"""A receiver that was down while a blocked probe was sent (a guest rebooting) is asked again
when the loop stops: the responder keeps what it received across restarts (--seen-log),
so YES is a leak, NO settles the probe, and silence stays unknown. Real responders on
loopback control sockets; no namespaces."""
import os
import subprocess
import sys
import threading
import time

from tests.harness.lab import REPO_ROOT, load_factor
from tests.harness.probe import LoopReport, Probe, ProbeLoop
from tests.harness.responder import Responder


def test_the_seen_log_survives_a_restart(tmp_path):
    log = str(tmp_path / "state" / "seen.log")
    first = Responder(log)
    first.record(b"0123456789abcdef\n")
    first.record(b"0123456789abcdef\n")   # the same nonce twice: one line
    first.record(b"bad nonce\x00\n")      # not a nonce: kept in memory only, never a line
    second = Responder(log)
    assert "0123456789abcdef" in second.seen
    assert "bad nonce" not in second.seen
    with open(log) as f:
        assert f.read() == "0123456789abcdef\n"


class _Lab:
    def __init__(self, paths):
        self.paths = paths

    def ctl_path(self, host):
        return self.paths[host]


def _responder(tmp_path, name, seen):
    """A real responder process (no ports) whose log already holds `seen`."""
    log, ctl = str(tmp_path / f"{name}.log"), str(tmp_path / f"{name}.ctl")
    with open(log, "w") as f:
        f.writelines(n + "\n" for n in seen)
    proc = subprocess.Popen([sys.executable, "-m", "tests.harness.responder", "--ctl", ctl, "--seen-log", log],
                            cwd=REPO_ROOT, start_new_session=False)
    deadline = time.monotonic() + 20 * load_factor()
    while not os.path.exists(ctl):
        assert proc.poll() is None and time.monotonic() < deadline, "the responder did not start"
        time.sleep(0.02)
    return proc, ctl


def test_unknowns_asked_again_become_leaks_or_settle(tmp_path):
    procs = []
    try:
        back, ctl = _responder(tmp_path, "guest", seen=["aaaaaaaaaaaaaaaa"])
        procs.append(back)
        lab = _Lab({"endpoint": ctl, "other": str(tmp_path / "nobody.ctl")})
        loop = ProbeLoop(lab, ask_again=True)
        got, missed, dead = (Probe("vendor", "endpoint", "tcp", 22, 4), Probe("dns", "endpoint", "udp", 53, 4),
                             Probe("rmm", "other", "tcp", 22, 4))
        loop.report = LoopReport()
        for nonce, p in (("aaaaaaaaaaaaaaaa", got), ("bbbbbbbbbbbbbbbb", missed), ("cccccccccccccccc", dead)):
            entry = (1.0, p, "no reply in 2s; receiver's responder did not answer SEEN")
            loop._nonces[id(entry)] = nonce
            loop.report.unknown.append(entry)
        loop._stop.set()
        loop._thread = threading.Thread(target=lambda: None)
        loop._thread.start()
        report = loop.stop()
        assert [p for _, p, _ in report.leaks] == [got]
        assert [p for _, p, _ in report.settled] == [missed]
        assert [p for _, p, _ in report.unknown] == [dead]
        assert not report.clean
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def test_without_ask_again_an_unknown_stays_unknown(tmp_path):
    loop = ProbeLoop(_Lab({}))
    entry = (1.0, Probe("vendor", "endpoint", "tcp", 22, 4), "silence")
    loop._nonces[id(entry)] = "aaaaaaaaaaaaaaaa"
    loop.report.unknown.append(entry)
    loop._stop.set()
    loop._thread = threading.Thread(target=lambda: None)
    loop._thread.start()
    assert loop.stop().unknown == [entry]
