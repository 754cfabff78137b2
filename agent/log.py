"""Structured logging: one JSON line per event, to stderr and to the audit log file."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import structlog


class _TeeLogger:
    """structlog logger that writes each rendered line to stderr and an append-only file."""

    def __init__(self, path: Path | None, stream=None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def msg(self, line: str) -> None:
        with self._lock:
            for out in (self._stream, self._file):
                if out is not None:
                    try:
                        out.write(line + "\n")
                        out.flush()
                    except (OSError, ValueError):
                        pass  # logging must never take the agent down

    log = debug = info = warning = warn = error = critical = exception = msg


def configure(audit_path: Path | None = None, stream=None):
    """Return a bound logger; `log.info("isolated", mode=..., ...)` writes {"event": "isolated", ...}."""
    tee = _TeeLogger(audit_path, stream)
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
