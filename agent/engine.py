"""The isolation engine: the state machine and the sensor-type rules for policy updates.

It decides what should be in force and asks the backend to make it so; it never talks
to a firewall itself. Every accepted change is stored durably *before* it is enforced
and before the caller hears back: a crash in between is healed by `start()`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict

from agent import __version__
from agent.connections import cut_by
from agent.compile import compile_plan
from agent.config import Config
from agent.errors import ApplyFailed, FieldError, InvalidInput
from platforms.plan import Mode, Plan
from agent.policy import validate_policy
from agent.store import AgentState, StateCorrupt, Store, now_iso
from platforms.base import Backend, BackendError, BackendUnavailable, ReadBack

MAX_REASON = 256


def check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise InvalidInput(FieldError("reason", f"must be printable text of at most {MAX_REASON} characters"))
    return reason


def state_view(s: AgentState, sensor_type: str) -> dict:
    """The persisted part of `status` (also shown by the CLI while the agent is down)."""
    latched = s.isolation_policy.version if s.isolation_policy else None
    return {
        "state": s.state,
        "mode": s.mode,
        "since": s.since,
        "reason": s.reason,
        "sensor_type": sensor_type,
        "policy": {
            "stored_version": s.stored_policy.version if s.stored_policy else None,
            "enforced_version": None,  # only the live agent can tell, from a read-back
            "pending_version": (s.stored_policy.version if s.state == "isolated" and s.stored_policy
                                and s.stored_version != (latched or 0) else None),
            "enabled": s.stored_policy.enabled if s.stored_policy else False,
        },
    }


class Engine:
    def __init__(self, config: Config, store: Store, backend: Backend, log) -> None:
        self.config = config
        self.store = store
        self.backend = backend
        self.log = log
        self.state = AgentState()
        self.started = time.time()
        self._lock = threading.RLock()

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> None:
        """Load the persisted state and enforce it, before anything else happens."""
        with self._lock:
            try:
                self.state = self.store.load()
            except StateCorrupt as exc:
                # Fail closed: strict isolation keeps only the vendor channel, so a responder
                # can still reach the host; the untrusted file is kept for forensics.
                aside = self.store.quarantine()
                self.state = AgentState(state="isolated", mode="strict", since=now_iso(),
                                        reason=f"fail-closed: {exc}")
                self.store.save(self.state)
                self.log.error("state_corrupt", error=str(exc), kept_as=str(aside), action="isolated strict")
            ms, _ = self._enforce()
            self.log.info("state_restored", state=self.state.state, mode=self.state.mode,
                          enforced_version=self._enforced_version(), apply_ms=ms)

    # -- commands -----------------------------------------------------------------
    def isolate(self, mode: Mode, reason: str | None, actor: dict) -> dict:
        reason = check_reason(reason)
        with self._lock:
            was = self.state
            self._commit(was.model_copy(update={
                "state": "isolated", "mode": mode, "reason": reason,
                "since": was.since if was.state == "isolated" else now_iso(),
                "isolation_policy": was.stored_policy,  # latest stored policy, both sensor types
            }))
            ms, seen = self._enforce()
            self.log.info("isolated", mode=mode, reason=reason, **actor, previous_state=was.state,
                          enforced_version=self._enforced_version(), apply_ms=ms)
            cut = cut_by(self.desired_plan())
            if cut:
                self.log.info("connections_cut", count=len(cut), connections=cut)
            return self.status(seen)

    def release(self, reason: str | None, actor: dict) -> dict:
        reason = check_reason(reason)
        with self._lock:
            was = self.state
            self._commit(AgentState(state="normal", since=now_iso(), reason=reason,
                                    stored_policy=was.stored_policy))
            ms, seen = self._enforce()
            self.log.info("released", reason=reason, **actor, previous_state=was.state, apply_ms=ms)
            return self.status(seen)

    def set_policy(self, doc: dict, actor: dict) -> dict:
        with self._lock:
            was = self.state
            policy = validate_policy(doc, max_per_direction=self.config.exceptions.max_per_direction,
                                     stored_version=was.stored_version)
            live = was.state == "isolated" and self.config.sensor_type == "endpoint_sensor"
            update = {"stored_policy": policy}
            if live:
                update["isolation_policy"] = policy
            self._commit(was.model_copy(update=update))
            self.log.info("policy_stored", version=policy.version, enabled=policy.enabled,
                          inbound=len(policy.inbound), outbound=len(policy.outbound), **actor)
            seen = None
            if live:
                ms, seen = self._enforce()
                self.log.info("policy_enforced", version=policy.version, mode=was.mode, apply_ms=ms)
            return self.status(seen)

    def reconcile(self) -> bool:
        """Re-apply if what the firewall holds differs from what should be in force.
        Returns True when tampering was found (and repaired)."""
        with self._lock:
            plan = self.desired_plan()
            seen = self.backend.read_back()
            if seen.enforces(plan):
                return False
            self.log.warning("tamper_detected", expected=plan.digest() if plan else None,
                             found=seen.digest, present=seen.present)
            ms, _ = self._enforce()
            self.log.info("tamper_repaired", apply_ms=ms)
            return True

    # -- views ----------------------------------------------------------------------
    def desired_plan(self) -> Plan | None:
        s = self.state
        if s.state != "isolated":
            return None
        return compile_plan(self.config, s.isolation_policy, s.mode or "strict")

    def status(self, seen: ReadBack | None = None) -> dict:
        """`seen`: a read-back just made by the caller, so the firewall is not read twice."""
        with self._lock:
            s = self.state
            plan = self.desired_plan()
            try:
                seen = seen or self.backend.read_back()
                enforcing, present, detail = seen.enforces(plan), seen.present, seen.details
            except BackendError as exc:
                enforcing, present, detail = False, None, {"error": str(exc)}
            caps = self.backend.capabilities()
            try:
                probes = [asdict(p) for p in self.backend.probe()]
            except BackendError as exc:
                probes = [{"name": "probe", "present": False, "evidence": str(exc)}]
            view = state_view(s, self.config.sensor_type)
            view["policy"]["enforced_version"] = self._enforced_version() if enforcing else None
            return {
                **view,
                "backend": {
                    "name": self.backend.name,
                    "enforcing": enforcing,
                    "rules_present": present,
                    "survives_agent_exit": caps.survives_agent_exit,
                    "capabilities": asdict(caps),
                    "probes": probes,
                    "details": detail,
                },
                "agent": {"pid": os.getpid(), "version": __version__,
                          "uptime_s": round(time.time() - self.started, 1)},
            }

    # -- internals ------------------------------------------------------------------
    def _enforced_version(self) -> int | None:
        s = self.state
        if s.state == "isolated" and s.mode == "standard" and s.isolation_policy:
            return s.isolation_policy.version
        return None

    def _commit(self, new: AgentState) -> None:
        self.store.save(new)   # durable first; only then enforce and acknowledge
        self.state = new

    def _enforce(self) -> tuple[float, ReadBack]:
        plan = self.desired_plan()
        t0 = time.monotonic()
        try:
            if plan is None:
                self.backend.clear()
            else:
                self.backend.apply(plan)
            seen = self.backend.read_back()
        except BackendUnavailable:
            raise  # not a refused change: this backend cannot run here at all
        except BackendError as exc:
            self.log.error("apply_failed", error=str(exc), state=self.state.state, mode=self.state.mode)
            raise ApplyFailed(f"the firewall refused the change: {exc}; the agent keeps retrying") from exc
        if not seen.enforces(plan):
            self.log.error("apply_failed", error="read-back differs from plan",
                           expected=plan.digest() if plan else None, found=seen.digest)
            raise ApplyFailed("the rules read back from the firewall differ from the plan")
        return round((time.monotonic() - t0) * 1000, 2), seen
