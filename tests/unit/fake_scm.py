"""The Service Control Manager half of the Windows fake (see fake_winapi.py): the service
database an installer writes, and the status protocol a running service must follow."""
from __future__ import annotations

import threading
from dataclasses import replace

from tests.unit import fake_winapi as fw

SERVICE_AUTO_START = 2


class FakeScm:
    def __init__(self, world) -> None:
        self.world = world
        self.cv = threading.Condition()
        self.services: dict[str, fw.Service] = {}
        self.open_handles: dict[int, str | None] = {}   # handle -> service name (None: the SCM)
        self._next = 7000
        self.launching: str | None = None
        self.history: dict[str, list] = {}    # name -> every ServiceStatus the service reported
        self.handlers: dict[int, tuple[str, object]] = {}
        self.dispatcher_returned = threading.Event()
        self.observer = None    # called with (name, status) on every accepted report

    def _handle(self, name: str | None) -> int:
        self._next += 1
        self.open_handles[self._next] = name
        return self._next

    # -- the service database (installer side) --------------------------------------------
    def open_scm(self) -> int:
        return self._handle(None)

    def create_service(self, scm, name, display_name, command_line, start_type, dependencies) -> int:
        assert self.open_handles.get(scm, "closed") is None, "CreateService needs an open SCM handle"
        if name in self.services:
            raise fw.FakeWinError("CreateServiceW", fw.ERROR_SERVICE_EXISTS)
        self.services[name] = fw.Service(name, display_name, command_line, start_type, tuple(dependencies))
        return self._handle(name)

    def open_service(self, scm, name) -> int:
        if name not in self.services:
            raise fw.FakeWinError("OpenServiceW", 1060)   # ERROR_SERVICE_DOES_NOT_EXIST
        return self._handle(name)

    def _svc(self, handle) -> fw.Service:
        name = self.open_handles.get(handle)
        if name is None:
            raise fw.FakeWinError("service call", 6)   # ERROR_INVALID_HANDLE
        return self.services[name]

    def change_service(self, svc, display_name, command_line, start_type, dependencies) -> None:
        s = self._svc(svc)
        s.display_name, s.command_line, s.start_type, s.dependencies = (display_name, command_line, start_type,
                                                                        tuple(dependencies))

    def set_description(self, svc, text) -> None:
        self._svc(svc).description = text

    def set_failure_actions(self, svc, reset_period_s, restart_delays_ms) -> None:
        s = self._svc(svc)
        s.reset_period_s, s.restart_delays_ms = reset_period_s, tuple(restart_delays_ms)

    def set_failure_actions_on_non_crash(self, svc, on) -> None:
        self._svc(svc).on_non_crash = bool(on)

    def set_delayed_auto_start(self, svc, on) -> None:
        s = self._svc(svc)
        if s.start_type != SERVICE_AUTO_START:
            raise fw.FakeWinError("ChangeServiceConfig2W", 87)  # delayed start is for auto-start services only
        s.delayed = bool(on)

    def start_service(self, svc) -> None:
        self._svc(svc).started += 1

    def close_service_handle(self, handle) -> None:
        if handle not in self.open_handles:
            raise fw.FakeWinError("CloseServiceHandle", 6)
        del self.open_handles[handle]

    def recovery_after(self, name: str, failures: int) -> tuple[str, int] | None:
        """What the SCM does after the n-th failure within the reset period: the n-th action,
        the last one repeating for every later failure."""
        s = self.services[name]
        if not s.restart_delays_ms:
            return None
        return ("restart", s.restart_delays_ms[min(failures, len(s.restart_delays_ms)) - 1])

    def recovers_from_stop(self, name: str, status) -> bool:
        """A STOPPED with an error exit code counts as a failure only with the flag set."""
        return status.win32_exit_code != 0 and self.services[name].on_non_crash

    # -- a running service (StartServiceCtrlDispatcher side) ------------------------------
    def start_dispatcher(self, name, service_main) -> None:
        if self.launching != name:
            raise fw.FakeWinError("StartServiceCtrlDispatcherW", fw.ERROR_FAILED_SERVICE_CONTROLLER_CONNECT)
        with self.cv:
            self.history[name] = []
        t = threading.Thread(target=service_main, args=([name],), name="fake-service-main", daemon=True)
        t.start()
        with self.cv:
            self.cv.wait_for(lambda: self._last(name) is not None and self._last(name).state == fw.STOPPED)
        t.join()
        self.dispatcher_returned.set()

    def register_handler(self, name, handler) -> int:
        h = self._handle(name)
        self.handlers[h] = (name, handler)
        return h

    def _last(self, name):
        hist = self.history.get(name) or []
        return hist[-1] if hist else None

    def set_status(self, handle, status) -> None:
        name, _ = self.handlers[handle]
        with self.cv:
            prev = self._last(name)
            state_before = prev.state if prev is not None else fw.START_PENDING  # the SCM's own start
            if status.state not in fw.LEGAL[state_before]:
                raise fw.ScmViolation(f"{name}: {state_before} -> {status.state} is not a legal transition")
            if status.state in fw.PENDING:
                if status.wait_hint_ms <= 0:
                    raise fw.ScmViolation(f"{name}: pending state {status.state} without a wait hint")
                if prev is not None and prev.state == status.state and status.checkpoint <= prev.checkpoint:
                    raise fw.ScmViolation(f"{name}: checkpoint did not rise ({prev.checkpoint} -> {status.checkpoint})")
                if status.checkpoint < 1:
                    raise fw.ScmViolation(f"{name}: pending state with checkpoint 0")
                if status.controls_accepted:
                    raise fw.ScmViolation(f"{name}: a pending service accepts no controls")
            elif status.checkpoint or status.wait_hint_ms:
                raise fw.ScmViolation(f"{name}: checkpoint/wait hint outside a pending state")
            if status.state == fw.STOPPED and status.win32_exit_code == 1066 and not status.service_exit_code:
                raise fw.ScmViolation(f"{name}: ERROR_SERVICE_SPECIFIC_ERROR without a service exit code")
            self.history[name].append(replace(status))
            if self.observer is not None:
                self.observer(name, status)
            self.cv.notify_all()

    def control(self, name: str, control: int) -> int:
        """ControlService: refused unless the last status accepts it; else the handler's answer."""
        with self.cv:
            last = self._last(name)
            if last is None or last.state != fw.RUNNING or not last.controls_accepted & fw.ACCEPT[control]:
                raise fw.FakeWinError("ControlService", fw.ERROR_INVALID_SERVICE_CONTROL)
        handler = [h for n, h in self.handlers.values() if n == name][-1]   # this run's registration
        return handler(control)

    def wait_state(self, name: str, state: int, timeout_s: float) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: any(s.state == state for s in self.history.get(name, [])), timeout_s)

    def states(self, name: str) -> list[int]:
        """The state sequence, consecutive repeats (checkpoint progress) folded."""
        out = []
        for s in self.history.get(name, []):
            if not out or out[-1] != s.state:
                out.append(s.state)
        return out
