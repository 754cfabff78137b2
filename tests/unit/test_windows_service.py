r"""`cordon run` under the Service Control Manager, against the fake SCM (which raises on any
status report the SCM protocol forbids): the real agent (agent.daemon.run via
agent.winservice) with the in-memory backend standing in for WinDivert, commanded over the
fake named pipe. DESIGN §1/§8: stopping or shutting down never releases isolation; the next
(boot) start enforces the stored state before it serves; a failing agent is restarted."""
import threading

import pytest

from agent import client, daemon, winservice
from agent.config import parse_config
from agent.control import control_server
from agent.store import Store
from platforms.windows.service import NotUnderScm, ServiceRunner
from platforms.windows.abi import ServiceStatus
from tests.unit import fake_winapi as fw
from tests.unit.memory_backend import MemoryBackend

PIPE = r"\\.\pipe\cordon-svc-test"
JOIN_S = 60   # generous: the machine is shared


class Machine:
    """The fake Windows host: one SCM, a firewall that a reboot empties."""

    def __init__(self, world, tmp_path, monkeypatch):
        self.world = world
        # On Linux the config validates a Unix path; the channel below is the pipe all the same.
        self.config = parse_config({"state_dir": str(tmp_path / "state"), "control_socket": "/unused",
                                    "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp",
                                                              "ports": "443"}]}})
        self.backends: list[MemoryBackend] = []
        self.system = world.process(fw.SYSTEM)
        monkeypatch.setattr(daemon, "backend_class", lambda name: self._new_backend)
        monkeypatch.setattr(daemon, "control_server", lambda _addr, engine, log, rejections=None: control_server(
            PIPE, engine, log, rejections, platform="win32", api=self.system))
        world.scm.services["Cordon"] = fw.Service("Cordon", "Cordon", "x", 2, ())
        world.scm.services["Cordon"].restart_delays_ms = (0,)
        self.thread = None
        self.exit_code = None

    def _new_backend(self, state_dir=None):
        b = MemoryBackend(state_dir)
        self.backends.append(b)
        return b

    def start(self):
        """The SCM launches the service process (`cordon run`)."""
        self.world.scm.launching = "Cordon"
        self.world.scm.history.pop("Cordon", None)
        self.thread = threading.Thread(target=self._process, daemon=True)
        self.thread.start()
        assert self.world.scm.wait_state("Cordon", fw.RUNNING, JOIN_S), self.world.scm.states("Cordon")

    def _process(self):
        self.exit_code = winservice.run(lambda: self.config, api=self.system)

    def wait_exit(self):
        self.thread.join(JOIN_S)
        assert not self.thread.is_alive(), self.world.scm.states("Cordon")

    def call(self, token, cmd, args=None):
        return client.call(PIPE, cmd, args, platform="win32", api=self.world.process(token))

    def last(self) -> ServiceStatus:
        return self.world.scm.history["Cordon"][-1]


@pytest.fixture
def machine(tmp_path, monkeypatch):
    m = Machine(fw.World(), tmp_path, monkeypatch)
    yield m
    if m.thread is not None and m.thread.is_alive():
        try:
            m.world.scm.control("Cordon", fw.CONTROL_STOP)
        finally:
            m.wait_exit()


@pytest.mark.parametrize("control", [fw.CONTROL_STOP, fw.CONTROL_SHUTDOWN])
def test_stop_and_shutdown_follow_the_scm_protocol_and_keep_isolation(machine, control):
    machine.start()
    assert machine.last().controls_accepted & 0x1 and machine.last().controls_accepted & 0x4, \
        "RUNNING must accept STOP and SHUTDOWN"
    assert machine.call(fw.ELEVATED_ADMIN, "isolate", {"strict": True})["state"] == "isolated"
    assert machine.world.scm.control("Cordon", control) == 0
    machine.wait_exit()
    assert machine.world.scm.states("Cordon") == [fw.START_PENDING, fw.RUNNING, fw.STOP_PENDING, fw.STOPPED]
    stop_pending = [s for s in machine.world.scm.history["Cordon"] if s.state == fw.STOP_PENDING]
    assert stop_pending[0].wait_hint_ms > 0
    assert (machine.last().win32_exit_code, machine.exit_code) == (0, 0)
    assert machine.backends[0].applied[-1] is not None, "stopping released isolation"
    assert Store(machine.config.state_dir).load().state == "isolated"


def test_the_boot_start_enforces_the_stored_isolation_before_it_serves(machine):
    machine.start()
    machine.call(fw.SYSTEM, "isolate", {})
    machine.world.scm.control("Cordon", fw.CONTROL_SHUTDOWN)
    machine.wait_exit()
    seen_at_running = []
    machine.world.scm.observer = lambda name, st: st.state == fw.RUNNING and seen_at_running.append(
        machine.backends[-1].installed)
    machine.start()   # the reboot: a fresh, empty firewall
    booted = machine.backends[-1]
    assert len(machine.backends) == 2 and booted.applied and booted.applied[0] is not None
    assert seen_at_running and seen_at_running[0] is not None, "RUNNING before isolation was enforced"
    st = machine.call(fw.USER, "status")
    assert st["state"] == "isolated" and st["backend"]["enforcing"] is True


def test_a_slow_stop_keeps_reporting_progress(machine):
    release = threading.Event()
    world, api = machine.world, machine.system

    def slow_agent(stop, serving):
        serving()
        stop.wait()
        release.wait(JOIN_S)   # the agent still closing its handles
        return 0

    runner = ServiceRunner(api, slow_agent, stop_wait_hint_ms=300)
    world.scm.launching = "Cordon"
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        assert world.scm.wait_state("Cordon", fw.RUNNING, JOIN_S)
        world.scm.control("Cordon", fw.CONTROL_STOP)
        with world.scm.cv:
            assert world.scm.cv.wait_for(lambda: sum(s.state == fw.STOP_PENDING
                                                     for s in world.scm.history["Cordon"]) >= 3, JOIN_S)
    finally:
        release.set()
        t.join(JOIN_S)
    assert not t.is_alive() and world.scm.states("Cordon")[-1] == fw.STOPPED


def test_a_failing_agent_stops_with_its_exit_code_so_recovery_restarts_it(machine):
    world = machine.world

    def broken_agent(stop, serving):
        raise RuntimeError("backend cannot run here")

    world.scm.launching = "Cordon"
    assert ServiceRunner(machine.system, broken_agent).run() == 1
    last = world.scm.history["Cordon"][-1]
    assert last.state == fw.STOPPED and last.win32_exit_code == 1066 and last.service_exit_code == 1
    world.scm.services["Cordon"].on_non_crash = True   # what the installer sets
    assert world.scm.recovers_from_stop("Cordon", last)
    assert world.scm.recovery_after("Cordon", 1) == ("restart", 0)


def test_a_bad_config_stops_the_service_with_exit_code_2(machine):
    from agent.config import load_config
    machine.world.scm.launching = "Cordon"
    code = winservice.run(lambda: load_config(str(machine.config.state_dir) + "/missing.toml"), api=machine.system)
    last = machine.last()
    assert code == 2 and last.state == fw.STOPPED and (last.win32_exit_code, last.service_exit_code) == (1066, 2)
    assert machine.world.scm.states("Cordon") == [fw.START_PENDING, fw.STOPPED]


def test_from_a_console_it_is_not_a_service(machine):
    with pytest.raises(NotUnderScm):
        ServiceRunner(machine.system, lambda stop, serving: 0).run()


def test_controls_are_refused_while_starting(machine):
    gate = threading.Event()

    def starting_agent(stop, serving):
        gate.wait(JOIN_S)
        serving()
        stop.wait(JOIN_S)
        return 0

    machine.world.scm.launching = "Cordon"
    t = threading.Thread(target=ServiceRunner(machine.system, starting_agent).run, daemon=True)
    t.start()
    try:
        assert machine.world.scm.wait_state("Cordon", fw.START_PENDING, JOIN_S)
        with pytest.raises(fw.FakeWinError):
            machine.world.scm.control("Cordon", fw.CONTROL_STOP)
    finally:
        gate.set()
        assert machine.world.scm.wait_state("Cordon", fw.RUNNING, JOIN_S)
        machine.world.scm.control("Cordon", fw.CONTROL_STOP)
        t.join(JOIN_S)
    assert not t.is_alive()


def test_the_fake_scm_is_strict():
    """The oracle itself: reports the SCM protocol forbids are refused."""
    world = fw.World()
    world.scm.history["X"] = []
    h = world.scm.register_handler("X", lambda c: 0)
    world.scm.set_status(h, ServiceStatus(fw.START_PENDING, 0, 0, 0, 1, 1000))
    with pytest.raises(fw.ScmViolation):
        world.scm.set_status(h, ServiceStatus(fw.START_PENDING, 0, 0, 0, 1, 1000))   # checkpoint did not rise
    with pytest.raises(fw.ScmViolation):
        world.scm.set_status(h, ServiceStatus(fw.STOP_PENDING, 0, 0, 0, 1, 0))       # no wait hint
    world.scm.set_status(h, ServiceStatus(fw.STOPPED))
    with pytest.raises(fw.ScmViolation):
        world.scm.set_status(h, ServiceStatus(fw.RUNNING, 5))                        # after STOPPED
