"""Structured logging: one JSON line per event, to stderr and to the audit log file.

The audit log is bounded (issue 14): every string field is cut to a short escaped
excerpt and every line to MAX_LINE_BYTES, so no caller controls more than a few hundred
bytes of it; rejection events are rate limited per uid (RateLimited); the file is
rotated once at MAX_FILE_BYTES; it is opened with O_NOFOLLOW; a write that fails is
counted and its reason kept for `status` (health()), never dropped silently."""
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


class _TeeLogger:
    """structlog logger that writes each rendered line to stderr and an append-only file."""

    def __init__(self, path: Path | None, stream=None, max_bytes: int = MAX_FILE_BYTES) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._path = path
        self._max_bytes = max_bytes
        self._file = None
        self.failures = 0
        self.last_error: str | None = None
        if path is not None:
            try:
                self._file = self._open(path)
            except OSError as exc:  # a symlink (ELOOP), a read-only or full disk: surfaced in status
                self.failures += 1
                self.last_error = f"cannot open {path}: {exc.strerror or exc}"
                print(f'{{"event": "audit_log_unavailable", "error": "{excerpt(self.last_error)}"}}',
                      file=self._stream, flush=True)

    @staticmethod
    def _open(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        # O_NOFOLLOW: a symlink planted at the log path must not redirect root's writes.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def msg(self, line: str) -> None:
        if len(line) > MAX_LINE_BYTES:
            line = line[:MAX_LINE_BYTES] + f'... (line cut at {MAX_LINE_BYTES} of {len(line)} characters)'
        with self._lock:
            for out in (self._stream, self._file):
                if out is None:
                    continue
                try:
                    out.write(line + "\n")
                    out.flush()
                except (OSError, ValueError) as exc:  # logging must never take the agent down
                    if out is self._file:
                        self.failures += 1
                        self.last_error = getattr(exc, "strerror", None) or str(exc)
            self._rotate_if_full()

    def _rotate_if_full(self) -> None:
        if self._file is None or self._path is None:
            return
        try:
            if os.fstat(self._file.fileno()).st_size < self._max_bytes:
                return
            os.replace(self._path, self._path.with_name(self._path.name + ".1"))
            old, self._file = self._file, self._open(self._path)
            old.close()
        except (OSError, ValueError) as exc:
            self.failures += 1
            self.last_error = f"rotation failed: {getattr(exc, 'strerror', None) or exc}"

    def health(self) -> dict:
        return {"path": str(self._path) if self._path else None, "ok": self.failures == 0,
                "write_failures": self.failures, "last_error": self.last_error}

    log = debug = info = warning = warn = error = critical = exception = msg


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


_current: _TeeLogger | None = None


def health() -> dict | None:
    """The audit log's write health (for `status`); None when no audit log is configured."""
    return _current.health() if _current is not None and _current._path is not None else None


def configure(audit_path: Path | None = None, stream=None):
    """Return a bound logger; `log.info("isolated", mode=..., ...)` writes {"event": "isolated", ...}."""
    global _current
    tee = _TeeLogger(audit_path, stream)
    _current = tee
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
