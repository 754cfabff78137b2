"""The isolation engine: the state machine and the sensor-type rules for policy updates.

It decides what should be in force and asks the backend to make it so; it never talks
to a firewall itself. One rule for every change: it is accepted only if its plan can be
built, applied, read back and stored. The new state is written and fsynced to a temp file
first (a full disk fails before the firewall is touched), then applied, then renamed into
place before the caller hears back. On any failure nothing is stored, what was in force is
put back, and the caller gets ApplyFailed naming the reason.

At start and in the watch loop there is no caller to refuse: if the stored state cannot be
enforced the engine falls back to the most isolated state the firewall accepts (strict,
else whatever is in force; never a release), reports `degraded` and keeps retrying.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict

from agent import __version__, hostx
from agent.connections import cut_by
from agent.compile import compile_plan
from agent.dhcp_leases import leased_servers
from agent.config import Config
from agent.errors import ApplyFailed
from agent.fields import check_reason
from platforms.plan import Mode, Plan
from agent.policy import validate_policy
from agent.resolve import HostTable
from agent.store import AgentState, StateCorrupt, Store, now_iso
from platforms.base import Backend, BackendError, BackendUnavailable, ReadBack

LAPSE_SLACK_S = 2.0  # a kernel timeout and the agent's clock may disagree by this much


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
        # the leased DHCP servers isolation lets DHCP reach (besides the broadcast address)
        "dhcp_servers": list(s.dhcp_servers),
    }


class Engine:
    def __init__(self, config: Config, store: Store, backend: Backend, log, health=None,
                 dhcp_leases=None) -> None:
        self.config = config
        self.store = store
        self.backend = backend
        self.log = log
        self.health = health          # callable -> dict, e.g. the audit log's write health
        self.channel_status = None    # callable -> dict: the console channel's state (agent/channel)
        self.state = AgentState()
        self.degraded: str | None = None  # why the stored state is not what is in force
        self.recheck_at: float | None = None  # when the watch must look again (a lapse was excused)
        self.started = time.time()
        self._lock = threading.RLock()
        self.hosts = HostTable(config.vendor.dns_servers, config.exceptions.min_host_ttl)
        self.wake = threading.Event()   # set on every change: the refresh loop re-plans its wait
        # callable -> (servers, leases): the DHCP servers of the host's leases, read when
        # isolation begins and pinned in the state while it lasts (agent/dhcp_leases.py)
        self.dhcp_leases = dhcp_leases or (lambda: leased_servers(config.vendor.dhcp_lease_files))

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> None:
        """Load the persisted state and enforce it, before anything else happens.
        Never raises for a firewall or disk failure: the agent must stay up."""
        with self._lock:
            self.state = self._load_or_adopt()
            ms = self._enforce_best()
            self.log.info("state_restored", state=self.state.state, mode=self.state.mode,
                          enforced_version=self._enforced_version(), apply_ms=ms, degraded=self.degraded)

    def _load_or_adopt(self) -> AgentState:
        try:
            state = self.store.load_if_present()
        except StateCorrupt as exc:
            # Fail closed: strict isolation keeps only the vendor channel, so a responder
            # can still reach the host; the untrusted file is kept for forensics.
            try:
                aside = self.store.quarantine()
            except OSError as err:
                aside = f"not moved aside: {err.strerror or err}"
            self.log.error("state_corrupt", error=str(exc), kept_as=str(aside), action="isolated strict")
            return self._persist_at_start(AgentState(state="isolated", mode="strict", since=now_iso(),
                                                     reason=f"fail-closed: {exc}",
                                                     dhcp_servers=self._learn_dhcp()))
        if state is not None:
            return state
        try:
            present = self.backend.read_back().present
        except BackendUnavailable:
            raise
        except Exception as exc:  # cannot tell: adopt, the safe side
            present, why = True, f"read-back failed: {exc}"
        else:
            why = "Cordon rules are in force"
        if not present:
            return AgentState()
        # A lost state file must never release the host: adopt what is in force, strict
        # because the policy behind it cannot be recovered.
        self.log.error("state_missing", path=str(self.store.path), found=why, action="adopted, isolated strict")
        return self._persist_at_start(AgentState(state="isolated", mode="strict", since=now_iso(),
                                                 reason=f"adopted: {self.store.path} was missing and {why}",
                                                 dhcp_servers=self._learn_dhcp()))

    def _persist_at_start(self, state: AgentState) -> AgentState:
        try:
            self.store.save(state)
        except OSError as exc:
            self.log.error("state_save_failed", error=_os_reason(exc))
        return state

    # -- commands -----------------------------------------------------------------
    def isolate(self, mode: Mode, reason: str | None, actor: dict) -> dict:
        reason = check_reason(reason)
        with self._lock:
            was = self.state
            ms, seen = self._change(was.model_copy(update={
                "state": "isolated", "mode": mode, "reason": reason,
                "since": was.since if was.state == "isolated" else now_iso(),
                "isolation_policy": was.stored_policy,  # latest stored policy, both sensor types
                # learned when isolation begins, then pinned (also through a local `isolate`)
                "dhcp_servers": was.dhcp_servers if was.state == "isolated" else self._learn_dhcp(),
            }))
            self.log.info("isolated", mode=mode, reason=reason, **actor, previous_state=was.state,
                          enforced_version=self._enforced_version(), apply_ms=ms)
            try:
                cut = cut_by(self.desired_plan())
            except Exception as exc:  # the isolation holds; cutting is a best-effort extra
                self.log.error("connections_cut_failed", error=repr(exc))
                cut = None
            if cut:
                self.log.info("connections_cut", count=len(cut), connections=cut)
            return self.status(seen)

    def release(self, reason: str | None, actor: dict) -> dict:
        reason = check_reason(reason)
        with self._lock:
            was = self.state
            ms, seen = self._change(AgentState(state="normal", since=now_iso(), reason=reason,
                                               stored_policy=was.stored_policy))
            self.log.info("released", reason=reason, **actor, previous_state=was.state, apply_ms=ms)
            return self.status(seen)

    def set_policy(self, doc: dict, actor: dict) -> dict:
        with self._lock:
            was = self.state
            policy = validate_policy(doc, max_per_direction=self.config.exceptions.max_per_direction,
                                     stored_version=was.stored_version, now=time.time(),
                                     dns_servers=self.config.vendor.dns_servers)
            live = was.state == "isolated" and self.config.sensor_type == "endpoint_sensor"
            update = {"stored_policy": policy}
            if live:
                update["isolation_policy"] = policy
            ms, seen = self._change(was.model_copy(update=update), apply=live)
            self.log.info("policy_stored", version=policy.version, enabled=policy.enabled,
                          inbound=len(policy.inbound), outbound=len(policy.outbound), **actor)
            if live:
                self.log.info("policy_enforced", version=policy.version, mode=was.mode, apply_ms=ms)
            return self.status(seen)

    def reconcile(self) -> bool:
        """Re-apply if what the firewall holds differs from what should be in force.
        Returns True when tampering was found (and repaired). While degraded, retries
        the stored state and raises ApplyFailed if it still cannot be enforced."""
        with self._lock:
            if self.degraded:
                self._enforce_best()
                if self.degraded:
                    raise ApplyFailed(self.degraded)
                self.log.info("recovered", state=self.state.state, mode=self.state.mode)
                return False
            seen = self.backend.read_back()
            if self.holds(seen):
                return False
            plan = self.desired_plan()
            self.log.warning("tamper_detected", expected=plan.digest() if plan else None,
                             found=seen.digest, present=seen.present,
                             problems=seen.problems)
            ms = self._enforce_best()
            if self.degraded:
                raise ApplyFailed(self.degraded)
            self.log.info("tamper_repaired", apply_ms=ms)
            return True

    def holds(self, seen) -> bool:
        """Does `seen` enforce the plan in force now, give or take a lapse (hostx.holds)? A
        lapse excused asks the watch for another look when the excuse ends (recheck_at)."""
        held, again = hostx.holds(seen, lambda t: self._plan_for(self.state, t), time.time(), LAPSE_SLACK_S)
        if again is not None:
            self.recheck_at = again
        return held

    # -- views ----------------------------------------------------------------------
    def desired_plan(self) -> Plan | None:
        return self._plan_for(self.state)

    def _plan_for(self, s: AgentState, now: float | None = None) -> Plan | None:
        """The plan `s` puts in force at `now` (default: the clock's now)."""
        if s.state != "isolated":
            return None
        return compile_plan(self.config, s.isolation_policy, s.mode or "strict", self.hosts.current(),
                            now=time.time() if now is None else now, dhcp_servers=s.dhcp_servers)

    def _learn_dhcp(self) -> tuple[str, ...]:
        """The servers of the DHCP leases the host holds now; none (broadcast only) when DHCP
        is off or the leases cannot be read."""
        if not self.config.vendor.dhcp:
            return ()
        try:
            servers, leases = self.dhcp_leases()
        except Exception as exc:
            self.log.error("dhcp_leases_unreadable", error=_reason(exc), servers=[])
            return ()
        self.log.info("dhcp_servers_learned", servers=list(servers),
                      leases=[{"interface": x.interface, "server": x.server, "file": x.source} for x in leases])
        return tuple(servers)

    def _resolve_for(self, s: AgentState) -> None:
        """Before a plan with host exceptions is built: answers for its names."""
        for host, answer in self.hosts.update(hostx.names_of(s), only=()).items():
            self.log.info("host_resolved", host=host, addresses=list(answer.addresses), ttl=answer.ttl,
                          error=answer.error)

    def exceptions_view(self, plan: Plan | None = None) -> dict:
        """DESIGN §11: each name's current addresses and their expiry; the expires_at."""
        with self._lock:
            plan = plan or self.desired_plan()
            return {"hosts": hostx.hosts_view(plan), "expiring": hostx.expiring_view(self.state)}

    def status(self, seen: ReadBack | None = None) -> dict:
        """`seen`: a read-back just made by the caller, so the firewall is not read twice."""
        with self._lock:
            s = self.state
            try:
                plan = self.desired_plan()
                seen = seen or self.backend.read_back()
                enforcing, present, detail = seen.enforces(plan), seen.present, seen.details
            except Exception as exc:
                enforcing, present, detail = False, None, {"error": _reason(exc)}
            caps = self.backend.capabilities()
            try:
                probes = [asdict(p) for p in self.backend.probe()]
            except BackendError as exc:
                probes = [{"name": "probe", "present": False, "evidence": str(exc)}]
            view = state_view(s, self.config.sensor_type)
            view["policy"]["enforced_version"] = self._enforced_version() if enforcing else None
            # DESIGN §11: each name's current addresses and their expiry; expires_at
            view["exceptions"] = self.exceptions_view(plan)
            return {
                **view,
                "degraded": self.degraded,
                "backend": {
                    "name": self.backend.name,
                    "enforcing": enforcing,
                    "rules_present": present,
                    "survives_agent_exit": caps.survives_agent_exit,
                    "capabilities": asdict(caps),
                    "probes": probes,
                    # both read back by the backend: how tamper is met (blocked or
                    # detect-and-repair) and the §6 paths it cannot close
                    "tamper": detail.get("tamper"),
                    "limits": detail.get("limits"),
                    "details": detail,
                },
                "channel": self.channel_status() if self.channel_status else None,
                "agent": {"pid": os.getpid(), "version": __version__,
                          "uptime_s": round(time.time() - self.started, 1),
                          **({"audit_log": self.health()} if self.health else {})},
            }

    # -- internals ------------------------------------------------------------------
    def _enforced_version(self) -> int | None:
        s = self.state
        if s.state == "isolated" and s.mode == "standard" and s.isolation_policy:
            return s.isolation_policy.version
        return None

    def _change(self, new: AgentState, apply: bool = True) -> tuple[float | None, ReadBack | None]:
        """The one rule: build the plan, stage the state on disk, apply and read back,
        then commit the state. Any failure: nothing stored, the old rules put back."""
        old_plan = self.desired_plan()
        try:
            self._resolve_for(new)
            plan = self._plan_for(new)
        except Exception as exc:
            raise ApplyFailed(f"cannot build the rules for this change: {_reason(exc)}") from exc
        try:
            staged = self.store.prepare(new)
        except OSError as exc:
            self.log.error("state_save_failed", error=_os_reason(exc))
            raise ApplyFailed(f"cannot store state: {_os_reason(exc)}; nothing was changed") from exc
        ms = seen = None
        try:
            if apply:
                ms, seen = self._apply(plan)
            staged.commit()
        except BaseException as exc:
            staged.abort()
            if apply:
                self._put_back(old_plan)
            if isinstance(exc, OSError):
                self.log.error("state_save_failed", error=_os_reason(exc))
                raise ApplyFailed(f"cannot store state: {_os_reason(exc)}; nothing was changed") from exc
            raise
        self.state = new
        if apply:
            self.degraded = None
        self.wake.set()
        return ms, seen

    def _put_back(self, plan: Plan | None) -> None:
        """After a failed change: make sure the previous rules are what is in force."""
        try:
            self._apply(plan)
        except ApplyFailed as exc:
            self.degraded = f"the previous rules could not be put back: {exc}"

    def _enforce_best(self) -> float | None:
        """Enforce the stored state; if the firewall refuses, the most isolated state it
        accepts (strict: vendor only); if none, leave what is in force. Sets `degraded`."""
        s = self.state
        candidates = [s]
        if s.state == "isolated" and s.mode != "strict":
            candidates.append(s.model_copy(update={"mode": "strict"}))
        failure = None
        try:
            self._resolve_for(s)
        except Exception as exc:  # resolving failed as a whole: the names allow nothing
            self.log.error("resolve_failed", error=repr(exc))
        for i, candidate in enumerate(candidates):
            try:
                ms, _ = self._apply(self._plan_for(candidate))
            except BackendUnavailable:
                raise  # this backend cannot run here at all: the daemon says so and exits 1
            except Exception as exc:
                failure = failure or _reason(exc)
                continue
            if i == 0:
                self.degraded = None
            else:
                self.degraded = f"stored state not enforceable ({failure}); enforcing strict isolation instead"
                self.log.error("degraded", reason=self.degraded)
            return ms
        self.degraded = (f"cannot enforce the stored state ({failure}); what was in force is left "
                         "in place and the agent keeps retrying")
        self.log.error("degraded", reason=self.degraded)
        return None

    def _apply(self, plan: Plan | None) -> tuple[float, ReadBack]:
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
            raise ApplyFailed(f"the firewall refused the change: {exc}") from exc
        except Exception as exc:
            self.log.error("apply_failed", error=repr(exc), state=self.state.state, mode=self.state.mode)
            raise ApplyFailed(f"the firewall change failed: {_reason(exc)}") from exc
        if not seen.enforces(plan):
            self.log.error("apply_failed", error="read-back differs from plan",
                           expected=plan.digest() if plan else None, found=seen.digest)
            raise ApplyFailed("the rules read back from the firewall differ from the plan")
        return round((time.monotonic() - t0) * 1000, 2), seen


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
