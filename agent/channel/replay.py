"""The replay guard: ids of commands (and release tokens) already used, on disk.

An id is remembered until its command has expired (plus the clock skew allowance),
after which the expiry check rejects it anyway. Written atomically with fsync before
the command is acknowledged, so a restart cannot make a used token usable again."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from agent.channel.verify import CLOCK_SKEW
from platforms.durable import write_atomic

FILE = "console-seen.json"
MAX_ENTRIES = 200_000


class ReplayGuard:
    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / FILE
        self._lock = threading.Lock()
        self._seen: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Fail closed would mean refusing every command; instead refuse to start the
            # channel with a clear reason (the caller logs it) rather than forget used ids.
            raise RuntimeError(f"replay guard {self.path} unreadable: {exc}") from None
        if not isinstance(doc, dict) or not all(isinstance(v, (int, float)) for v in doc.values()):
            raise RuntimeError(f"replay guard {self.path} is corrupt")
        return doc

    def seen(self, cid: str) -> bool:
        with self._lock:
            return cid in self._seen

    def record(self, cid: str, expires_epoch: float) -> None:
        """Remember `cid` durably (raises OSError if the state dir cannot take it)."""
        with self._lock:
            now = time.time()
            keep = {k: v for k, v in self._seen.items() if v + CLOCK_SKEW.total_seconds() > now}
            keep[cid] = expires_epoch
            if len(keep) > MAX_ENTRIES:  # drop the soonest-expiring first
                keep = dict(sorted(keep.items(), key=lambda kv: kv[1])[-MAX_ENTRIES:])
            self._write(keep)
            self._seen = keep

    def _write(self, doc: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode(), mode=0o600)
