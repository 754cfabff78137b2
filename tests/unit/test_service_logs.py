"""The installed service's logs and systemd protocol (DESIGN §8): syslog priorities on the
journal stream, an audit log that survives logrotate, READY=1 only when enforcing."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import syslog

import pytest

from agent.daemon import ServiceNotifier
from agent.engine import Engine
from agent.log import audit_log_path, configure, reopen_audit_log
from agent.store import Store
from tests.conftest import ROOT
from tests.unit.memory_backend import MemoryBackend
from tests.unit.test_engine import config

ACTOR = {"caller_uid": 0}


@pytest.fixture
def journal_pipe(monkeypatch):
    """A pipe that the logger is told is the journal stream ($JOURNAL_STREAM = its dev:ino)."""
    r, w = os.pipe()
    st = os.fstat(w)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    reader, writer = os.fdopen(r, "r"), os.fdopen(w, "w")
    yield reader, writer
    writer.close()
    reader.close()


def lines_of(reader, writer) -> list[str]:
    writer.close()
    return reader.read().splitlines()


def test_tamper_detected_reaches_the_journal_as_a_warning(tmp_path, journal_pipe):
    reader, writer = journal_pipe
    log = configure(tmp_path / "audit.log", stream=writer)
    backend = MemoryBackend()
    engine = Engine(config(), Store(str(tmp_path / "state")), backend, log)
    engine.start()
    engine.isolate("strict", None, ACTOR)
    backend.tamper()
    assert engine.reconcile() is True
    log.error("apply_failed", error="x")
    by_event = {}
    for line in lines_of(reader, writer):
        assert line.startswith("<"), line
        prio, text = line[1:].split(">", 1)
        by_event[json.loads(text)["event"]] = int(prio)
    # Oracle: the syslog priority numbers of <syslog.h>, not the module's own table.
    assert by_event["tamper_detected"] == syslog.LOG_WARNING
    assert by_event["isolated"] == syslog.LOG_INFO
    assert by_event["apply_failed"] == syslog.LOG_ERR
    # The audit file itself stays plain JSON lines.
    for line in (tmp_path / "audit.log").read_text().splitlines():
        json.loads(line)


def test_no_priority_prefix_when_stderr_is_not_the_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    r, w = os.pipe()
    reader, writer = os.fdopen(r, "r"), os.fdopen(w, "w")
    configure(None, stream=writer).warning("tamper_detected")
    (line,) = lines_of(reader, writer)
    assert json.loads(line)["event"] == "tamper_detected"
    reader.close()


def test_audit_log_follows_a_rotation_without_losing_a_line(tmp_path):
    path = tmp_path / "log" / "audit.log"
    log = configure(path, stream=open(os.devnull, "w"))
    log.info("one")
    os.rename(path, tmp_path / "log" / "audit.log.1")   # what logrotate does (create, no copytruncate)
    log.info("two")
    log.info("three")
    events = lambda p: [json.loads(x)["event"] for x in p.read_text().splitlines()]
    assert events(tmp_path / "log" / "audit.log.1") == ["one"]
    assert events(path) == ["two", "three"]
    assert (path.stat().st_mode & 0o777) == 0o640


def test_sighup_reopens_the_audit_log_at_once(tmp_path):
    """A real process: the agent's handler (installed first thing in `cordon run`) makes a
    new file appear right after the rename, before any further line."""
    path = tmp_path / "audit.log"
    code = (
        "import signal, sys, threading; from pathlib import Path\n"
        "from agent.log import configure, reopen_audit_log\n"
        "got = threading.Event()\n"
        "signal.signal(signal.SIGHUP, lambda *_: (reopen_audit_log(), got.set()))\n"
        f"log = configure(Path({str(path)!r})); log.info('first')\n"
        "print('ready', flush=True); got.wait(60); print('reopened', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        os.rename(path, tmp_path / "audit.log.1")
        assert not path.exists()
        p.send_signal(signal.SIGHUP)
        assert p.stdout.readline().strip() == "reopened"
        assert path.exists() and path.read_text() == ""
    finally:
        p.kill()
        p.wait()


def test_audit_log_goes_to_the_systemd_logs_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("LOGS_DIRECTORY", "/var/log/cordon")
    assert str(audit_log_path(tmp_path / "audit.log")) == "/var/log/cordon/audit.log"
    monkeypatch.delenv("LOGS_DIRECTORY")
    assert audit_log_path(tmp_path / "audit.log") == tmp_path / "audit.log"


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield s
    s.close()


def received(s) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_only_once_the_stored_state_is_enforced(tmp_path, notify_socket):
    backend = MemoryBackend()
    engine = Engine(config(), Store(str(tmp_path)), backend, configure(None, stream=open(os.devnull, "w")))
    engine.start()
    engine.isolate("strict", None, ACTOR)
    n = ServiceNotifier()
    n.update(engine, problem="the firewall refused the change")
    (msg,) = received(notify_socket)
    assert "READY=1" not in msg and msg.startswith("STATUS=NOT ENFORCING")
    n.update(engine)
    (msg,) = received(notify_socket)
    assert msg.splitlines() == ["READY=1", "STATUS=isolated (strict): vendor only"]
    n.update(engine)          # nothing changed: nothing sent
    assert received(notify_socket) == []
    engine.release(None, ACTOR)
    n.update(engine)
    assert received(notify_socket) == ["STATUS=normal: no Cordon rules in force"]
