"""Structured logging: one JSON line per event, to stderr and to the audit log file."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import structlog


# syslog priorities (RFC 5424) for the journal: `journalctl -p warning -u cordon` finds
# tamper_detected, refused changes and everything worse.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def stream_is_journal(stream) -> bool:
    """True when `stream` is systemd's journal stream ($JOURNAL_STREAM names its device:inode),
    so that a `<N>` prefix is read as the line's priority (SyslogLevelPrefix=, default on)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class AuditFile:
    """An append-only log file that follows rotation: before each line it checks that the
    path still names the open file (logrotate renamed it away: reopen), and `reopen()` does
    the same on demand (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None
        self.reopen()

    def reopen(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        old, self._fh = self._fh, os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        if old is not None:
            old.close()

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        now = os.fstat(self._fh.fileno())
        return (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino)

    def write(self, text: str) -> None:
        if self._rotated():
            self.reopen()
        self._fh.write(text)
        self._fh.flush()

    def flush(self) -> None:
        self._fh.flush()


class _TeeLogger:
    """structlog logger that writes each rendered line to stderr (with its syslog priority
    when stderr is the journal) and to the audit log file."""

    def __init__(self, path: Path | None, stream=None) -> None:
        self._stream = stream or sys.stderr
        self._journal = stream_is_journal(self._stream)
        self._lock = threading.Lock()
        self.audit = AuditFile(path) if path is not None else None

    def _write(self, line: str, level: str) -> None:
        with self._lock:
            for out, text in ((self._stream, f"<{PRIORITY[level]}>{line}" if self._journal else line),
                              (self.audit, line)):
                if out is not None:
                    try:
                        out.write(text + "\n")
                        out.flush()
                    except (OSError, ValueError):
                        pass  # logging must never take the agent down

    def debug(self, line: str) -> None:
        self._write(line, "debug")

    def info(self, line: str) -> None:
        self._write(line, "info")

    def warning(self, line: str) -> None:
        self._write(line, "warning")

    def error(self, line: str) -> None:
        self._write(line, "error")

    def critical(self, line: str) -> None:
        self._write(line, "critical")

    msg = log = info
    warn = warning
    exception = error


_current: _TeeLogger | None = None


def reopen_audit_log() -> None:
    """Reopen the audit log file (SIGHUP, after a rotation)."""
    if _current is not None and _current.audit is not None:
        with _current._lock:
            try:
                _current.audit.reopen()
            except OSError:
                pass  # the next line retries; logging must never take the agent down


def audit_log_path(default: Path) -> Path:
    """Under systemd (LogsDirectory=cordon) the audit log is $LOGS_DIRECTORY/audit.log, i.e.
    /var/log/cordon/audit.log; elsewhere (labs, tests) the config's default."""
    logs = os.environ.get("LOGS_DIRECTORY", "").split(":")[0]
    return Path(logs) / "audit.log" if logs else default


def configure(audit_path: Path | None = None, stream=None):
    """Return a bound logger; `log.info("isolated", mode=..., ...)` writes {"event": "isolated", ...}."""
    global _current
    tee = _current = _TeeLogger(audit_path, stream)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        logger_factory=lambda *args: tee,
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()


def null_logger():
    """A logger that drops everything (tests and one-shot CLI commands)."""
    return structlog.wrap_logger(structlog.ReturnLogger(), processors=[structlog.processors.JSONRenderer()])
