"""Host exceptions and expiring exceptions as the engine sees them (DESIGN §11): which
names a state needs, which exceptions have expired, whether a read-back differs from the
plan only by a kernel timeout that ran out, and the views for status."""
from __future__ import annotations

import time

from agent.fields import format_utc
from agent.store import AgentState
from platforms.base import ReadBack
from platforms.plan import Plan

DIRECTIONS = ("inbound", "outbound")


def _enforced_policy(s: AgentState):
    p = s.isolation_policy
    if s.state != "isolated" or s.mode != "standard" or p is None or not p.enabled:
        return None
    return p


def names_of(s: AgentState) -> tuple[str, ...]:
    """The DNS names the state enforces (none unless isolated standard with an enabled policy)."""
    p = _enforced_policy(s)
    return p.hosts() if p is not None else ()


def expired(s: AgentState, now: float):
    """(key, direction, exception) of every enforced exception whose expires_at has passed."""
    p = _enforced_policy(s)
    if p is None:
        return
    for direction in DIRECTIONS:
        for e in p.active(direction):
            ends = e.expires_epoch()
            if ends is not None and ends <= now:
                yield (p.version, direction, e.key()), direction, e


def holds(seen: ReadBack, plan_at, now: float, slack: float) -> tuple[bool, float | None]:
    """Does the read-back `seen` enforce the plan in force at `now` (`plan_at(t)`: the plan
    compiled as of t)? It does also with some flows that expire within `slack` of now present
    or gone, as at some moment in that span: the kernel drops an element at its own moment,
    before or after the agent's clock says so, and the refresh loop syncs soon after; that
    is not tamper. (held, when the first such excuse ends: look again then, else None)."""
    if seen.enforces(plan_at(now)):
        return True, None
    wide = plan_at(now - slack)
    if wide is None:
        return False, None
    ends = sorted({f.expires for f in wide.flows if f.expires is not None and now - slack < f.expires <= now + slack})
    if not ends:  # then `wide` is the plan at now, which `seen` does not enforce
        return False, None
    if any(seen.enforces(wide.lapsed(t)) for t in [now - slack, *ends]):  # none gone yet, then one by one
        return True, ends[0] + slack
    return False, None


def hosts_view(plan: Plan | None) -> list[dict]:
    """names → addresses → expiry, for status and policy show."""
    if plan is None:
        return []
    return [{"host": h.host, "addresses": list(h.addresses), "ttl": h.ttl,
             "expires": format_utc(h.expires) if h.expires else None, "error": h.error} for h in plan.hosts]


def expiring_view(s: AgentState) -> list[dict]:
    p = s.isolation_policy
    if p is None:
        return []
    now = time.time()
    return [{"direction": d, "exception": e.label(d), "expires_at": e.expires_at, "expired": e.expires_epoch() <= now}
            for d in DIRECTIONS for e in p.active(d) if e.expires_at]
