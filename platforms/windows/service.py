"""`cordon run` under the Windows Service Control Manager (the SCM protocol).

The process calls StartServiceCtrlDispatcher; the SCM then runs ServiceMain on a thread of
its own, which registers the control handler and reports:

  START_PENDING (checkpoints, wait hint) -> RUNNING once the agent serves (accepting STOP and
  SHUTDOWN) -> on STOP or SHUTDOWN: STOP_PENDING (checkpoints, wait hint) -> STOPPED with the
  agent's exit code (non-zero: ERROR_SERVICE_SPECIFIC_ERROR + the code, so the recovery
  actions the installer set restart it).

Stopping is the agent's ordinary stop: it closes its handles and never releases isolation;
the state on disk still says isolated, so the boot start re-applies it before serving.
A pending state is re-reported with a higher checkpoint well within its wait hint, so the
SCM never takes a slow stop for a hung service.
"""
from __future__ import annotations

import threading

from platforms.windows.abi import (ERROR_CALL_NOT_IMPLEMENTED, ERROR_FAILED_SERVICE_CONTROLLER_CONNECT,
                                      ERROR_SERVICE_SPECIFIC_ERROR, NO_ERROR, SERVICE_ACCEPT_SHUTDOWN,
                                      SERVICE_ACCEPT_STOP, SERVICE_CONTROL_INTERROGATE, SERVICE_CONTROL_SHUTDOWN,
                                      SERVICE_CONTROL_STOP, SERVICE_RUNNING, SERVICE_START_PENDING,
                                      SERVICE_STOP_PENDING, SERVICE_STOPPED, ServiceStatus, WinApiError)

SERVICE_NAME = "Cordon"
START_WAIT_HINT_MS = 30_000   # restoring enforcement at boot may take a while
STOP_WAIT_HINT_MS = 10_000
PENDING = (SERVICE_START_PENDING, SERVICE_STOP_PENDING)


class NotUnderScm(Exception):
    """The process was started from a console, not by the SCM: run in the foreground."""


class ServiceRunner:
    """main(stop, serving) is the agent: it returns its exit code once `stop` is set, and
    calls serving() when it enforces the stored state and answers on its control channel."""

    def __init__(self, api, main, name: str = SERVICE_NAME, stop_wait_hint_ms: int = STOP_WAIT_HINT_MS) -> None:
        self.api, self.main, self.name = api, main, name
        self.stop_wait_hint_ms = stop_wait_hint_ms
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self._lock = threading.Lock()
        self._state = SERVICE_STOPPED
        self._checkpoint = 0
        self._wait_hint_ms = 0
        self._handle = None
        self._progress = threading.Event()   # wakes the ticker when the state changes

    def run(self) -> int:
        """Serve the SCM until the service stopped; the process's exit code."""
        try:
            self.api.start_dispatcher(self.name, self._service_main)
        except WinApiError as exc:
            if exc.code == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
                raise NotUnderScm(str(exc)) from None
            raise
        return self.exit_code if self.exit_code is not None else 1

    # -- ServiceMain, on the SCM's thread -------------------------------------------------
    def _service_main(self, _argv) -> None:
        self._handle = self.api.register_handler(self.name, self._on_control)
        self._report(SERVICE_START_PENDING, START_WAIT_HINT_MS)
        ticker = threading.Thread(target=self._tick, name="scm-progress", daemon=True)
        ticker.start()
        try:
            code = self.main(self.stop, self._serving)
        except BaseException as exc:  # noqa: BLE001 - the SCM must hear STOPPED whatever happened
            code = getattr(exc, "exit_code", 1) or 1
        self.exit_code = code
        self._report(SERVICE_STOPPED, 0, exit_code=code)
        ticker.join()

    def _serving(self) -> None:
        with self._lock:
            starting = self._state == SERVICE_START_PENDING
        if starting:
            self._report(SERVICE_RUNNING, 0)

    def _tick(self) -> None:
        """Re-report a pending state with checkpoint + 1 at a third of its wait hint."""
        while True:
            with self._lock:
                if self._state == SERVICE_STOPPED:
                    return
                pause = self._wait_hint_ms / 3000 if self._state in PENDING else None
            self._progress.wait(pause)
            self._progress.clear()
            with self._lock:
                if self._state in PENDING:
                    self._set(self._state, self._wait_hint_ms, self._checkpoint + 1)

    # -- the control handler, on the dispatcher's thread: returns at once -------------------
    def _on_control(self, control: int) -> int:
        if control in (SERVICE_CONTROL_STOP, SERVICE_CONTROL_SHUTDOWN):
            with self._lock:
                if self._state == SERVICE_RUNNING:
                    self._set(SERVICE_STOP_PENDING, self.stop_wait_hint_ms, 1)
            self.stop.set()
            self._progress.set()
            return NO_ERROR
        if control == SERVICE_CONTROL_INTERROGATE:
            return NO_ERROR   # the SCM already holds the last status
        return ERROR_CALL_NOT_IMPLEMENTED

    # -- status reports ------------------------------------------------------------------
    def _report(self, state: int, wait_hint_ms: int, exit_code: int = 0) -> None:
        with self._lock:
            self._set(state, wait_hint_ms, 1 if state in PENDING else 0, exit_code)
        self._progress.set()

    def _set(self, state: int, wait_hint_ms: int, checkpoint: int, exit_code: int = 0) -> None:
        """Caller holds the lock."""
        accepted = SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN if state == SERVICE_RUNNING else 0
        win32, specific = (NO_ERROR, 0) if exit_code == 0 else (ERROR_SERVICE_SPECIFIC_ERROR, exit_code)
        self.api.set_status(self._handle, ServiceStatus(state, accepted, win32, specific, checkpoint, wait_hint_ms))
        self._state, self._checkpoint, self._wait_hint_ms = state, checkpoint, wait_hint_ms
