"""Keeps host exceptions correct and expiring exceptions ended while the agent runs
(DESIGN §11): re-resolves each name before its answer's TTL runs out, and shortly after
a flow's kernel timeout has run out brings the plan in force in line, logging
`exception_expired` once per exception. On nftables that is one batch of set element
changes (Backend.refresh); the kernel timeouts keep it fail-closed while the agent is dead.
"""
from __future__ import annotations

import threading
import time

from agent import hostx
from agent.errors import ApplyFailed
from agent.fields import format_utc
from platforms.base import BackendError

LAPSE_WAIT_S = 0.25   # sync this long after a kernel timeout ran out (the kernel acts at the time)
MAX_WAIT_S = 60.0
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.2, 5.0


class Refresher:
    def __init__(self, engine) -> None:
        self.engine = engine
        self._announced: set[tuple] = set()

    def next_due(self) -> float | None:
        e = self.engine
        with e._lock:
            plan = e.desired_plan()
            expiry = plan.next_expiry() if plan else None
            times = [expiry + LAPSE_WAIT_S if expiry is not None else None,
                     e.hosts.refresh_at() if hostx.names_of(e.state) else None]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def refresh(self) -> bool:
        """Re-resolve the names that are due, drop what expired. True if the rules changed.
        The names are resolved outside the engine lock (up to resolve.LIFETIME_S each, more
        if the resolvers are unreachable), so commands and status never wait on DNS; the
        answers are then pruned to the names of the state in force under the lock."""
        e = self.engine
        with e._lock:
            names = hostx.names_of(e.state)
            due = e.hosts.due(time.time())
        before = e.hosts.current()
        found = e.hosts.update(names, only=due, prune=False) if names else {}
        with e._lock:
            now = time.time()
            e.hosts.update(hostx.names_of(e.state), only=())  # prune; a new name was resolved by its command
            for host, answer in found.items():
                was = before.get(host)
                if was is None or (was.addresses, was.error) != (answer.addresses, answer.error):
                    e.log.info("host_resolved", host=host, addresses=list(answer.addresses),
                               ttl=answer.ttl, error=answer.error)  # only when the answer changed
            self._announce_expired(now)
            plan = e.desired_plan()
            if plan is None or e.degraded:
                return False
            # Always through the backend, even when the read-back already matches: the
            # kernel timeouts of the answers just renewed must move too.
            t0 = time.monotonic()
            try:
                e.backend.refresh(plan)
                seen = e.backend.read_back()
                ok = e.holds(seen)
                if not ok:
                    e.log.warning("refresh_not_in_force", expected=plan.digest(), found=seen.digest,
                                  problems=seen.problems)
            except BackendError as exc:
                e.log.error("refresh_failed", error=str(exc))
                ok = False
            if not ok:
                e._enforce_best()  # the whole plan again, the usual way
                if e.degraded:
                    raise ApplyFailed(e.degraded)
                return True
            nxt = plan.next_expiry()
            e.log.info("rules_refreshed", apply_ms=round((time.monotonic() - t0) * 1000, 2),
                       flows=len(plan.flows), next_expiry=format_utc(nxt) if nxt else None)
            return True

    def _announce_expired(self, now: float) -> None:
        for key, direction, ex in hostx.expired(self.engine.state, now):
            if key not in self._announced:
                self._announced.add(key)
                self.engine.log.info("exception_expired", policy_version=key[0], direction=direction,
                                     exception=ex.label(direction), expires_at=ex.expires_at)

    def loop(self, stop: threading.Event) -> None:
        """Until `stop`: wait for the next due time (or a change of state), refresh."""
        e, backoff = self.engine, 0.0
        while not stop.is_set():
            due = self.next_due()
            wait = backoff or (MAX_WAIT_S if due is None else min(MAX_WAIT_S, max(0.0, due - time.time())))
            if e.wake.wait(wait):
                e.wake.clear()
                self._announce_expired(time.time())
                continue  # the plan changed: compute the next due time again
            if stop.is_set():
                return
            try:
                self.refresh()
                backoff = 0.0
            except Exception as exc:  # the loop must outlive any single failure
                if not isinstance(exc, ApplyFailed):
                    e.log.error("refresh_loop_failed", error=repr(exc))
                backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, backoff * 2))
