"""`cordon status` while the agent is down: the same keys as the live status (DESIGN §2, §8),
from the stored state, with the firewall read back where the platform and the caller's
privileges allow; where not, `backend.enforcing` is null and `backend.reason` says why."""
from __future__ import annotations

import os
from dataclasses import asdict

from agent.config import Config
from agent.engine import Engine, state_view
from agent.log import null_logger
from agent.store import AgentState, StateCorrupt, Store
from platforms import backend_class
from platforms.base import BackendError

NOT_RUNNING_AGENT = {"running": False, "pid": None, "version": None, "uptime_s": None}


def _channel(config: Config) -> dict | None:
    if getattr(config, "console", None) is None:
        return None
    from agent.channel import disabled_status
    return disabled_status(config.console, "the agent is not running")


def offline_status(config: Config) -> dict:
    store = Store(config.state_dir)
    try:
        state = store.load()
    except (StateCorrupt, OSError) as exc:
        # The agent would isolate strictly on such a file; nothing here may read as "normal".
        return {"state": None, "mode": None, "since": None, "reason": None,
                "state_error": f"stored state unreadable: {exc}", "sensor_type": config.sensor_type,
                "policy": {"stored_version": None, "enforced_version": None, "pending_version": None,
                           "enabled": None},
                "backend": _unknown(config.backend, "the stored state is unreadable"),
                "channel": _channel(config), "agent": dict(NOT_RUNNING_AGENT)}
    view = state_view(state, config.sensor_type)
    backend, enforced = _backend_view(config, store, state)
    view["policy"]["enforced_version"] = enforced
    return {**view, "backend": backend, "channel": _channel(config), "agent": dict(NOT_RUNNING_AGENT)}


def _unknown(name: str, reason: str, **extra) -> dict:
    return {"name": name, "enforcing": None, "rules_present": None, "reason": reason, **extra}


def _backend_view(config: Config, store: Store, state: AgentState) -> tuple[dict, int | None]:
    try:
        cls = backend_class(config.backend, check_support=False)
    except BackendError as exc:
        return _unknown(config.backend, str(exc)), None
    caps = cls.capabilities()
    extra = {"survives_agent_exit": caps.survives_agent_exit, "capabilities": asdict(caps)}
    if not caps.survives_agent_exit:
        return _unknown(cls.name, f"{cls.name} rules end with the agent process: nothing of Cordon "
                                  "is in force while it is down", **extra), None
    if hasattr(os, "geteuid") and os.geteuid() != 0:   # Windows: the read-back itself says if it may
        return _unknown(cls.name, "reading the firewall back needs root (try: sudo cordon status)",
                        **extra), None
    try:
        cls = backend_class(config.backend)   # can it run here at all?
    except BackendError as exc:
        return _unknown(cls.name, str(exc), **extra), None
    backend = cls(state_dir=config.state_dir)
    try:
        engine = Engine(config, store, backend, null_logger())
        engine.state = state
        seen = backend.read_back()
        enforcing = seen.enforces(engine.desired_plan())
        enforced = engine._enforced_version() if enforcing else None
    except BackendError as exc:
        return _unknown(cls.name, f"read-back failed: {exc}", **extra), None
    finally:
        backend.close()
    return {"name": cls.name, "enforcing": enforcing, "rules_present": seen.present,
            "reason": "read back from the firewall by this command (the agent is down)",
            "details": seen.details, **extra}, enforced
