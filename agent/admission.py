"""Who may hold a control connection now (DESIGN §7). Decided on the peer's account (a uid,
or a user SID on Windows) when the connection is accepted, before a byte of the request is read.

- privileged peers (agent.peers.may_change_state) have their own slots, so no number of
  unprivileged clients can take them;
- the other accounts share a pool, each at most a few connections at once;
- each unprivileged account is rate limited (a token bucket), so a loop cannot monopolise the agent.
A refused client gets an explicit `busy` reply, never a reset."""
from __future__ import annotations

import threading
import time

ROOT_SLOTS = 16
SHARED_SLOTS = 32
PER_UID_SLOTS = 8
RATE_PER_S = 20.0     # sustained requests per second for one non-root uid
BURST = 40.0


class Admission:
    def __init__(self, root_slots=ROOT_SLOTS, shared_slots=SHARED_SLOTS, per_uid=PER_UID_SLOTS,
                 rate=RATE_PER_S, burst=BURST, clock=time.monotonic) -> None:
        self.root_slots, self.shared_slots, self.per_uid = root_slots, shared_slots, per_uid
        self.rate, self.burst, self.clock = rate, burst, clock
        self._lock = threading.Lock()
        self._active: dict[int | str | None, int] = {}
        self._shared = 0
        self._buckets: dict[int | str | None, tuple[float, float]] = {}  # account -> (tokens, at)

    def admit(self, uid: int | str | None, privileged: bool) -> str | None:
        """None when admitted (call leave(uid, privileged) when done), else why the client is busy."""
        with self._lock:
            held = self._active.get(uid, 0)
            if privileged:
                if held >= self.root_slots:
                    return "too many root requests at once; try again"
            else:
                if not self._take_token(uid):
                    return f"too many requests from {_who(uid)}; slow down"
                if held >= self.per_uid:
                    return f"{_who(uid)} already has {held} connections open"
                if self._shared >= self.shared_slots:
                    return "too many clients at once; try again"
                self._shared += 1
            self._active[uid] = held + 1
            return None

    def leave(self, uid: int | str | None, privileged: bool) -> None:
        with self._lock:
            n = self._active.get(uid, 0) - 1
            if n > 0:
                self._active[uid] = n
            else:
                self._active.pop(uid, None)
            if not privileged:
                self._shared -= 1

    def _take_token(self, uid: int | str | None) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(uid, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._buckets) > 4096:  # bounded memory whatever the number of uids
            self._buckets.clear()
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            return False
        self._buckets[uid] = (tokens - 1.0, now)
        return True


def _who(account: int | str | None) -> str:
    return f"uid {account}" if not isinstance(account, str) else f"account {account}"
