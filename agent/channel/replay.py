"""The replay guard: ids of commands (and release tokens) already used, and the stream
sequence of the last command applied, on disk.

An id is remembered until its command has expired (plus the clock skew allowance),
after which the expiry check rejects it anyway. The sequence keeps the console's order:
a command the broker stored before the last applied one (a redelivery, a reset consumer)
must not undo it. It belongs to one stream (its creation time): a stream created anew
numbers from 1 again. Written atomically with fsync before the command is acknowledged,
so a restart cannot make a used token usable again nor an older command current.

    {"ids": {"<id>": <expiry epoch>, ...}, "stream": "<created, RFC 3339>", "applied_seq": 17}
"""
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
        self._seen, self.stream, self.applied_seq = self._load()

    def _load(self) -> tuple[dict[str, float], str | None, int]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}, None, 0
        except (OSError, ValueError) as exc:
            # Fail closed would mean refusing every command; instead refuse to start the
            # channel with a clear reason (the caller logs it) rather than forget used ids.
            raise RuntimeError(f"replay guard {self.path} unreadable: {exc}") from None
        if isinstance(doc, dict) and "ids" not in doc:   # written before sequences were kept
            doc = {"ids": doc, "stream": None, "applied_seq": 0}
        if not isinstance(doc, dict):
            raise RuntimeError(f"replay guard {self.path} is corrupt")
        ids, stream, seq = doc.get("ids"), doc.get("stream"), doc.get("applied_seq")
        if (not isinstance(ids, dict) or not all(isinstance(v, (int, float)) for v in ids.values())
                or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0
                or not (stream is None or isinstance(stream, str))):
            raise RuntimeError(f"replay guard {self.path} is corrupt")
        return ids, stream, seq

    def seen(self, cid: str) -> bool:
        with self._lock:
            return cid in self._seen

    def bind_stream(self, stream: str | None, last_seq: int) -> None:
        """The stream the channel reads now (its creation time) and its last sequence.
        Another stream than the one `applied_seq` counts in, or one that never reached
        it, numbers afresh: the order starts again (kept on disk with the next record)."""
        with self._lock:
            if stream != self.stream or self.applied_seq > last_seq:
                self.stream, self.applied_seq = stream, 0

    def record(self, cid: str, expires_epoch: float, seq: int | None = None) -> None:
        """Remember `cid` (and `seq`, the stream sequence it was applied at) durably;
        raises OSError if the state dir cannot take it."""
        with self._lock:
            now = time.time()
            keep = {k: v for k, v in self._seen.items() if v + CLOCK_SKEW.total_seconds() > now}
            keep[cid] = expires_epoch
            if len(keep) > MAX_ENTRIES:  # drop the soonest-expiring first
                keep = dict(sorted(keep.items(), key=lambda kv: kv[1])[-MAX_ENTRIES:])
            applied = max(self.applied_seq, seq or 0)
            self._write({"ids": keep, "stream": self.stream, "applied_seq": applied})
            self._seen, self.applied_seq = keep, applied

    def _write(self, doc: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode(), mode=0o600)
