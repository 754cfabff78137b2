"""Structured logging: one JSON line per event, to stderr and to the audit log file.

The audit log is bounded (issue 14): every string field is cut to a short escaped
excerpt and every line to MAX_LINE_BYTES, so no caller controls more than a few hundred
bytes of it; rejection events are rate limited per uid (RateLimited); the file is
rotated once at MAX_FILE_BYTES (a cap even without logrotate); it is opened with
O_NOFOLLOW; a write that fails is counted and its reason kept for `status` (health()),
never dropped silently."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import structlog

MAX_FIELD_CHARS = 240
MAX_LINE_BYTES = 8 * 1024
MAX_FILE_BYTES = 32 * 1024 * 1024   # then audit.log -> audit.log.1 (one kept): at most 2x this


def excerpt(text: object, limit: int = MAX_FIELD_CHARS) -> str:
    """A short, escaped excerpt of caller-controlled text: non-printable characters as
    escapes, cut to `limit` characters with the full length noted."""
    s = text if isinstance(text, str) else str(text)
    cut = s[:limit]
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    if len(s) > limit:
        out += f"... ({len(s)} characters)"
    return out


def _bound_fields(_logger, _name, event: dict) -> dict:
    for k, v in list(event.items()):
        if isinstance(v, str) and (len(v) > MAX_FIELD_CHARS or not v.isprintable()):
            event[k] = excerpt(v)
    return event


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

    def __init__(self, path: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fh = None   # opened by reopen(); the caller handles a failure to open

    def reopen(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        # O_NOFOLLOW: a symlink planted at the log path must not redirect root's writes.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o640)   # Windows has neither flag: the logs dir's ACL guards it
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
        if self._fh is None or self._rotated():
            self.reopen()
        self._fh.write(text)
        self._fh.flush()
        if os.fstat(self._fh.fileno()).st_size >= self.max_bytes:  # the cap: keep one old file
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.reopen()

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()


class _TeeLogger:
    """structlog logger that writes each rendered line to stderr (with its syslog priority
    when stderr is the journal) and to the audit log file."""

    def __init__(self, path: Path | None, stream=None, max_bytes: int = MAX_FILE_BYTES) -> None:
        self._stream = stream or sys.stderr
        self._journal = stream_is_journal(self._stream)
        self._lock = threading.Lock()
        self.failures = 0
        self.last_error: str | None = None
        self.audit = AuditFile(path, max_bytes) if path is not None else None
        if self.audit is not None:
            try:
                self.audit.reopen()
            except OSError as exc:  # a symlink (ELOOP), a read-only or full disk: surfaced in status
                self._failed(f"cannot open {path}: {exc.strerror or exc}")
                print(f'{{"event": "audit_log_unavailable", "error": "{excerpt(self.last_error)}"}}',
                      file=self._stream, flush=True)

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason

    def health(self) -> dict:
        return {"path": str(self.audit.path) if self.audit else None, "ok": self.failures == 0,
                "write_failures": self.failures, "last_error": self.last_error}

    def _write(self, line: str, level: str) -> None:
        if len(line) > MAX_LINE_BYTES:
            line = line[:MAX_LINE_BYTES] + f"... (line cut at {MAX_LINE_BYTES} of {len(line)} characters)"
        with self._lock:
            for out, text in ((self._stream, f"<{PRIORITY[level]}>{line}" if self._journal else line),
                              (self.audit, line)):
                if out is not None:
                    try:
                        out.write(text + "\n")
                        out.flush()
                    except (OSError, ValueError) as exc:  # logging must never take the agent down
                        if out is self.audit:
                            self._failed(getattr(exc, "strerror", None) or str(exc))

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


class RateLimited:
    """Rejection events, at most `burst` per key then `rate` per second; what is held back
    is counted and reported with the next event that passes (`suppressed`)."""

    def __init__(self, log, rate: float = 2.0, burst: float = 20.0, clock=time.monotonic) -> None:
        self.log, self.rate, self.burst, self.clock = log, rate, burst, clock
        self._lock = threading.Lock()
        self._state: dict = {}   # key -> [tokens, at, suppressed]

    def event(self, key, name: str, **fields) -> bool:
        with self._lock:
            now = self.clock()
            tokens, at, held = self._state.get(key, [self.burst, now, 0])
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._state[key] = [tokens, now, held + 1]
                return False
            if len(self._state) > 4096:
                self._state.clear()
            self._state[key] = [tokens - 1.0, now, 0]
        self.log.warning(name, **fields, **({"suppressed": held} if held else {}))
        return True


def health() -> dict | None:
    """The audit log's write health (for `status`); None when no audit log is configured."""
    return _current.health() if _current is not None and _current.audit is not None else None


def audit_log_path(default: Path) -> Path:
    """Under systemd (LogsDirectory=cordon) the audit log is $LOGS_DIRECTORY/audit.log, i.e.
    /var/log/cordon/audit.log; under launchd the plist sets LOGS_DIRECTORY=/Library/Logs/Cordon
    (agent.paths); elsewhere (labs, tests) the config's default."""
    logs = os.environ.get("LOGS_DIRECTORY", "").split(":")[0]
    return Path(logs) / "audit.log" if logs else default


def configure(audit_path: Path | None = None, stream=None):
    """Return a bound logger; `log.info("isolated", mode=..., ...)` writes {"event": "isolated", ...}."""
    global _current
    tee = _current = _TeeLogger(audit_path, stream)
    structlog.configure(
        processors=[
            _bound_fields,
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
