"""Issue 14: one rule in the engine. A change is accepted only if its plan can be built,
applied and stored; otherwise nothing is stored, nothing in force changes, and the caller
gets a clear error. A failure while isolated never lifts isolation: the agent degrades to
the most isolated state it can enforce and keeps retrying."""
import json

import pytest

from agent.config import parse_config
from agent.engine import Engine
from agent.errors import ApplyFailed, InvalidInput
from agent.log import null_logger
from agent.store import Store
from platforms.base import BackendError
from tests.unit.memory_backend import MemoryBackend

VENDOR = {"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}
RMM = {"protocol": "tcp", "address": "203.0.113.20", "ports": "any"}
VENDOR_ONLY = frozenset({("out", "tcp", "198.51.100.10/32", 443, 443)})


def config(sensor_type="endpoint_sensor"):
    return parse_config({"sensor_type": sensor_type, "vendor": {"endpoints": [VENDOR]}})


def engine(state_dir, backend=None, sensor_type="endpoint_sensor"):
    e = Engine(config(sensor_type), Store(state_dir), backend or MemoryBackend(), null_logger())
    e.start()
    return e


class RefusingBackend(MemoryBackend):
    """Refuses any plan that carries exceptions (as a firewall might refuse a big policy)."""

    def apply(self, plan):
        if plan.by_origin("exception"):
            raise BackendError("injected: the firewall refused the exceptions")
        super().apply(plan)


class ExplodingBackend(MemoryBackend):
    """Raises something that is not a BackendError (a bug, an OSError, a ValueError)."""

    def __init__(self, exc):
        super().__init__()
        self.exc = exc
        self.armed = False

    def apply(self, plan):
        if self.armed:
            raise self.exc
        super().apply(plan)


def state_bytes(d):
    p = d / "state.json"
    return p.read_bytes() if p.exists() else None


def test_refused_isolate_stores_nothing_and_changes_nothing(tmp_path):
    e = engine(tmp_path)
    e.backend.fail_next = True
    before = state_bytes(tmp_path)
    with pytest.raises(ApplyFailed):
        e.isolate("standard", None, {})
    assert state_bytes(tmp_path) == before
    assert e.state.state == "normal" and e.backend.installed is None


def test_refused_policy_is_not_stored(tmp_path):
    """Defect: set_policy saved before enforcing, then reconcile logged tamper forever."""
    e = engine(tmp_path, RefusingBackend())
    e.isolate("standard", None, {})
    before = state_bytes(tmp_path)
    with pytest.raises(ApplyFailed):
        e.set_policy({"version": 1, "enabled": True, "outbound": [RMM]}, {})
    assert state_bytes(tmp_path) == before
    assert e.state.stored_policy is None
    assert e.backend.installed[1] == VENDOR_ONLY
    assert e.reconcile() is False  # nothing to "repair": what is stored is what is in force


@pytest.mark.parametrize("exc", [ValueError("boom"), OSError(5, "Input/output error"),
                                 KeyError("x"), RuntimeError("bug")])
def test_every_exception_type_is_mapped_and_nothing_changes(tmp_path, exc):
    e = engine(tmp_path, ExplodingBackend(exc))
    e.backend.armed = True
    with pytest.raises(ApplyFailed) as info:
        e.isolate("strict", None, {})
    assert str(info.value)
    assert state_bytes(tmp_path) is None and e.state.state == "normal"


def test_store_failure_leaves_the_firewall_as_it_was(tmp_path, monkeypatch):
    e = engine(tmp_path)
    e.isolate("strict", None, {})
    before = e.backend.installed

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", no_space)
    with pytest.raises(ApplyFailed) as info:
        e.release(None, {})
    assert "cannot store state" in str(info.value) and "No space left on device" in str(info.value)
    assert e.backend.installed == before and e.state.state == "isolated"


def test_restart_with_refused_policy_degrades_to_strict_and_keeps_retrying(tmp_path):
    first = engine(tmp_path)
    first.set_policy({"version": 1, "enabled": True, "outbound": [RMM]}, {})
    first.isolate("standard", None, {})
    backend = RefusingBackend()
    second = engine(tmp_path, backend)   # must not raise: the daemon stays up
    assert backend.installed[1] == VENDOR_ONLY   # the most isolated state it can enforce
    st = second.status()
    assert st["state"] == "isolated" and st["degraded"] and "refused" in st["degraded"]
    # the stored intent is kept, so a retry that succeeds restores it
    assert json.loads(state_bytes(tmp_path))["mode"] == "standard"
    second.backend = MemoryBackend()
    second.reconcile()
    assert second.status()["degraded"] is None
    assert second.backend.installed[1] > VENDOR_ONLY


def test_restart_when_nothing_can_be_applied_keeps_what_is_in_force(tmp_path):
    first = engine(tmp_path)
    first.isolate("strict", None, {})
    installed = first.backend.installed
    backend = MemoryBackend()
    backend.installed = installed           # the table survived the agent
    backend.apply = lambda plan: (_ for _ in ()).throw(BackendError("netlink: EPERM"))
    second = engine(tmp_path, backend)
    assert backend.installed == installed   # never cleared
    assert "EPERM" in second.status()["degraded"]


def test_missing_state_with_rules_in_force_is_adopted_not_deleted(tmp_path):
    """Defect: a lost state.json read as normal, and start() deleted the live table."""
    first = engine(tmp_path)
    first.set_policy({"version": 1, "enabled": True, "outbound": [RMM]}, {})
    first.isolate("standard", None, {})
    backend = MemoryBackend()
    backend.installed = first.backend.installed
    (tmp_path / "state.json").unlink()
    second = engine(tmp_path, backend)
    st = second.status()
    assert (st["state"], st["mode"]) == ("isolated", "strict")
    assert "adopted" in st["reason"]
    assert backend.installed is not None and backend.installed[1] == VENDOR_ONLY
    assert json.loads(state_bytes(tmp_path))["state"] == "isolated"


def test_missing_state_and_no_rules_is_a_fresh_normal_agent(tmp_path):
    e = engine(tmp_path)
    assert e.status()["state"] == "normal" and e.status()["degraded"] is None


def test_unbuildable_plan_is_refused_before_anything_changes(tmp_path, monkeypatch):
    e = engine(tmp_path)
    monkeypatch.setattr("agent.engine.compile_plan", lambda *a: (_ for _ in ()).throw(ValueError("bad flow")))
    with pytest.raises(CordonErrorTypes):
        e.isolate("standard", None, {})
    assert state_bytes(tmp_path) is None and e.backend.installed is None


CordonErrorTypes = (ApplyFailed, InvalidInput)
