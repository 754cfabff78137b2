"""The state machine and the sensor-type table (DESIGN §1), with an in-memory backend."""
import json

import pytest

from agent.compile import compile_plan
from agent.config import parse_config
from agent.engine import Engine
from agent.errors import ApplyFailed, InvalidInput
from agent.log import null_logger
from agent.store import Store
from tests.unit.memory_backend import MemoryBackend

RMM = {"protocol": "tcp", "address": "203.0.113.20", "ports": "any"}
JUMP = {"protocol": "tcp", "address": "203.0.113.5", "ports": "3389"}


def config(sensor_type="endpoint_sensor"):
    return parse_config({"sensor_type": sensor_type,
                         "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}})


def policy(version, *outbound, enabled=True):
    return {"version": version, "enabled": enabled, "outbound": list(outbound)}


class Host:
    """One agent life: engine + backend over a state dir that outlives it."""

    def __init__(self, state_dir, sensor_type="endpoint_sensor", backend=None):
        self.config = config(sensor_type)
        self.backend = backend or MemoryBackend()
        self.engine = Engine(self.config, Store(state_dir), self.backend, null_logger())
        self.engine.start()

    def allowed_exceptions(self):
        """Exception atoms actually installed (independent of what the engine reports)."""
        if self.backend.installed is None:
            return None
        vendor_only = compile_plan(self.config, None, "strict").atoms()
        return self.backend.installed[1] - vendor_only

    def status(self):
        return self.engine.status()


def atoms_for(*entries):
    return frozenset(("out", e["protocol"], e["address"] + "/32", 0, 0) for e in entries)


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_fresh_agent_is_normal_and_installs_nothing(host):
    st = host.status()
    assert st["state"] == "normal" and st["mode"] is None
    assert host.backend.installed is None and st["backend"]["enforcing"] is True
    assert st["policy"] == {"stored_version": None, "enforced_version": None, "pending_version": None, "enabled": False}


@pytest.mark.parametrize("sensor_type", ["endpoint_sensor", "security_agent"])
def test_policy_while_normal_is_stored_only_and_touches_no_firewall(tmp_path, sensor_type):
    h = Host(tmp_path, sensor_type)
    applied_before = list(h.backend.applied)
    h.engine.set_policy(policy(1, RMM), {})
    assert h.backend.applied == applied_before and h.backend.installed is None
    assert h.status()["policy"]["stored_version"] == 1


def test_endpoint_sensor_enforces_new_policy_at_once(host):
    host.engine.set_policy(policy(1, RMM), {})
    host.engine.isolate("standard", "case 1", {})
    assert host.allowed_exceptions() == atoms_for(RMM)
    host.engine.set_policy(policy(2, JUMP), {})
    assert host.allowed_exceptions() == frozenset({("out", "tcp", "203.0.113.5/32", 3389, 3389)})
    pol = host.status()["policy"]
    assert (pol["stored_version"], pol["enforced_version"], pol["pending_version"]) == (2, 2, None)


def test_security_agent_keeps_new_policy_pending_until_isolate(tmp_path):
    h = Host(tmp_path, "security_agent")
    h.engine.set_policy(policy(1, RMM), {})
    h.engine.isolate("standard", None, {})
    h.engine.set_policy(policy(2, JUMP), {})
    assert h.allowed_exceptions() == atoms_for(RMM)
    pol = h.status()["policy"]
    assert (pol["stored_version"], pol["enforced_version"], pol["pending_version"]) == (2, 1, 2)
    h.engine.isolate("standard", "re-apply", {})
    assert h.allowed_exceptions() == frozenset({("out", "tcp", "203.0.113.5/32", 3389, 3389)})
    assert h.status()["policy"]["enforced_version"] == 2


@pytest.mark.parametrize("sensor_type", ["endpoint_sensor", "security_agent"])
def test_reisolate_applies_latest_policy_and_mode(tmp_path, sensor_type):
    h = Host(tmp_path, sensor_type)
    h.engine.set_policy(policy(1, RMM), {})
    h.engine.isolate("strict", None, {})
    assert h.allowed_exceptions() == frozenset()
    assert h.status()["policy"]["enforced_version"] is None
    h.engine.set_policy(policy(2, RMM, JUMP), {})
    h.engine.isolate("standard", None, {})
    assert h.allowed_exceptions() == atoms_for(RMM) | {("out", "tcp", "203.0.113.5/32", 3389, 3389)}


def test_strict_allows_vendor_only(host):
    host.engine.set_policy(policy(1, RMM), {})
    host.engine.isolate("strict", None, {})
    assert host.backend.installed[1] == frozenset({("out", "tcp", "198.51.100.10/32", 443, 443)})
    assert host.status()["mode"] == "strict"


def test_disabled_policy_enforces_no_exceptions(host):
    host.engine.set_policy(policy(1, RMM, enabled=False), {})
    host.engine.isolate("standard", None, {})
    assert host.allowed_exceptions() == frozenset()


def test_inactive_exceptions_are_not_enforced(host):
    host.engine.set_policy(policy(1, RMM, {**JUMP, "active": False}), {})
    host.engine.isolate("standard", None, {})
    assert host.allowed_exceptions() == atoms_for(RMM)


def test_release_removes_everything_and_keeps_the_policy(host):
    host.engine.set_policy(policy(1, RMM), {})
    host.engine.isolate("standard", None, {})
    host.engine.release("done", {})
    st = host.status()
    assert host.backend.installed is None
    assert (st["state"], st["mode"], st["policy"]["stored_version"]) == ("normal", None, 1)


def test_reisolate_keeps_since(host):
    host.engine.isolate("standard", None, {})
    since = host.status()["since"]
    host.engine.isolate("strict", None, {})
    assert host.status()["since"] == since


@pytest.mark.parametrize("reason", ["x" * 257, "line\nbreak", "\x1b[31mred"])
def test_bad_reason_is_rejected_before_anything_changes(host, tmp_path, reason):
    with pytest.raises(InvalidInput) as info:
        host.engine.isolate("standard", reason, {})
    assert info.value.errors[0].field == "reason"
    assert host.backend.installed is None and not (tmp_path / "state.json").exists()


def test_stale_policy_changes_nothing(host, tmp_path):
    host.engine.set_policy(policy(3, RMM), {})
    host.engine.isolate("standard", None, {})
    before = (tmp_path / "state.json").read_bytes()
    with pytest.raises(InvalidInput):
        host.engine.set_policy(policy(3, JUMP), {})
    assert (tmp_path / "state.json").read_bytes() == before
    assert host.allowed_exceptions() == atoms_for(RMM)


def test_a_refused_isolate_is_not_stored(tmp_path):
    """The firewall refuses: nothing is stored, so a restart does not enforce it either
    (issue 14: a change is accepted only if it can be applied)."""
    h = Host(tmp_path)
    h.backend.fail_next = True
    with pytest.raises(ApplyFailed):
        h.engine.isolate("standard", None, {})
    assert not (tmp_path / "state.json").exists()
    h2 = Host(tmp_path, backend=MemoryBackend())
    assert h2.backend.installed is None and h2.status()["state"] == "normal"


# -- restart from each persisted state -----------------------------------------------
def _story(h, step):
    e = h.engine
    if step >= 1:
        e.set_policy(policy(1, RMM), {})
    if step >= 2:
        e.isolate("standard", "r", {})
    if step >= 3:
        e.set_policy(policy(2, JUMP), {})
    if step >= 4:
        e.isolate("strict", "s", {})
    if step >= 5:
        e.release(None, {})


@pytest.mark.parametrize("sensor_type", ["endpoint_sensor", "security_agent"])
@pytest.mark.parametrize("step", range(6))
def test_restart_restores_each_persisted_state(tmp_path, sensor_type, step):
    first = Host(tmp_path, sensor_type)
    _story(first, step)
    before = first.status()
    installed = first.backend.installed
    # a new agent life with an empty firewall (as after a reboot)
    second = Host(tmp_path, sensor_type, backend=MemoryBackend())
    after = second.status()
    for key in ("state", "mode", "since", "reason", "policy"):
        assert after[key] == before[key], key
    assert second.backend.installed == installed
    assert after["backend"]["enforcing"]


def test_corrupt_state_fails_closed_to_strict(tmp_path):
    (tmp_path / "state.json").write_text('{"format": 1, "state": "isolat')
    h = Host(tmp_path)
    st = h.status()
    assert (st["state"], st["mode"]) == ("isolated", "strict")
    assert "fail-closed" in st["reason"] and "corrupt" in st["reason"]
    assert h.backend.installed[1] == frozenset({("out", "tcp", "198.51.100.10/32", 443, 443)})
    kept = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == '{"format": 1, "state": "isolat'


@pytest.mark.parametrize("content", ['{"format": 1, "state": "paused"}', "[]", '{"format": 9}',
                                     '{"format": 1, "state": "normal", "extra": 1}'])
def test_tampered_state_is_not_silently_reset(tmp_path, content):
    (tmp_path / "state.json").write_text(content)
    h = Host(tmp_path)
    assert h.status()["state"] == "isolated"


def test_reconcile_restores_vanished_rules(host):
    host.engine.isolate("standard", None, {})
    installed = host.backend.installed
    host.backend.installed = None  # someone flushed the firewall
    assert host.engine.reconcile() is True
    assert host.backend.installed == installed
    assert host.engine.reconcile() is False


def test_reconcile_removes_rules_left_while_normal(host):
    host.backend.installed = (True, frozenset())
    assert host.engine.reconcile() is True and host.backend.installed is None


# -- the enforcing flag is read back, so it can be False ----------------------------
def test_tampered_rules_read_back_as_not_enforcing(host):
    host.engine.isolate("standard", None, {})
    assert host.status()["backend"]["enforcing"] is True
    host.backend.tamper()
    st = host.status()
    assert st["backend"]["enforcing"] is False and st["policy"]["enforced_version"] is None


def test_a_firewall_that_installs_less_than_the_plan_fails_the_apply(host):
    host.backend.lossy = True
    with pytest.raises(ApplyFailed):
        host.engine.isolate("standard", None, {})
    # issue 14: the refused change is not stored and the previous rules (none) are put back
    st = host.status()
    assert st["state"] == "normal" and host.backend.installed is None and st["backend"]["enforcing"] is True
