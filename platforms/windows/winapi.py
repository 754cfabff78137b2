"""The thin seam to the Windows API: advapi32 and kernel32 through ctypes, nothing else.

Every method is one or a few documented calls with their errors raised as WinApiError (the
call's name and the Windows error code). The service, pipe and installer logic lives in the
sibling modules and talks only to an object with these methods, so tests drive it with a
fake (tests/unit/fake_winapi.py). Importing this module works anywhere; creating WinApi()
needs Windows. The constants and the values it passes are in abi.py.
"""
from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes as wt

from platforms.windows.abi import (SERVICE_WIN32_OWN_PROCESS, SERVICE_ERROR_NORMAL, SC_MANAGER_ALL_ACCESS,
                                   SERVICE_ALL_ACCESS, SERVICE_CONFIG_DESCRIPTION, SERVICE_CONFIG_FAILURE_ACTIONS,
                                   SERVICE_CONFIG_DELAYED_AUTO_START_INFO, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG,
                                   SC_ACTION_RESTART, ERROR_BROKEN_PIPE, ERROR_CALL_NOT_IMPLEMENTED,
                                   ERROR_PIPE_BUSY, ERROR_NO_DATA, ERROR_PIPE_CONNECTED, ERROR_IO_PENDING,
                                   PIPE_ACCESS_DUPLEX, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED,
                                   PIPE_REJECT_REMOTE_CLIENTS, PIPE_UNLIMITED_INSTANCES, OPEN_EXISTING,
                                   SECURITY_SQOS_PRESENT, SECURITY_IDENTIFICATION, SDDL_REVISION_1,
                                   OWNER_SECURITY_INFORMATION, DACL_SECURITY_INFORMATION,
                                   PROTECTED_DACL_SECURITY_INFORMATION, TOKEN_QUERY,
                                   PROCESS_QUERY_LIMITED_INFORMATION, TOKEN_USER_CLASS, TOKEN_GROUPS_CLASS,
                                   WAIT_TIMEOUT, INFINITE, WinApiError, ServiceStatus, TokenIdentity)


class _SERVICE_STATUS(ctypes.Structure):
    _fields_ = [("dwServiceType", wt.DWORD), ("dwCurrentState", wt.DWORD), ("dwControlsAccepted", wt.DWORD),
                ("dwWin32ExitCode", wt.DWORD), ("dwServiceSpecificExitCode", wt.DWORD),
                ("dwCheckPoint", wt.DWORD), ("dwWaitHint", wt.DWORD)]


class _SC_ACTION(ctypes.Structure):
    _fields_ = [("Type", ctypes.c_int), ("Delay", wt.DWORD)]


class _FAILURE_ACTIONS(ctypes.Structure):
    _fields_ = [("dwResetPeriod", wt.DWORD), ("lpRebootMsg", wt.LPWSTR), ("lpCommand", wt.LPWSTR),
                ("cActions", wt.DWORD), ("lpsaActions", ctypes.POINTER(_SC_ACTION))]


class _SECURITY_ATTRIBUTES(ctypes.Structure):
    _fields_ = [("nLength", wt.DWORD), ("lpSecurityDescriptor", wt.LPVOID), ("bInheritHandle", wt.BOOL)]


class _OVERLAPPED(ctypes.Structure):
    _fields_ = [("Internal", ctypes.c_size_t), ("InternalHigh", ctypes.c_size_t), ("Offset", wt.DWORD),
                ("OffsetHigh", wt.DWORD), ("hEvent", wt.HANDLE)]


class _SID_AND_ATTRIBUTES(ctypes.Structure):
    _fields_ = [("Sid", wt.LPVOID), ("Attributes", wt.DWORD)]


class _SERVICE_TABLE_ENTRY(ctypes.Structure):
    _fields_ = [("lpServiceName", wt.LPWSTR), ("lpServiceProc", wt.LPVOID)]


def _multi_sz(items: tuple[str, ...]) -> ctypes.Array:
    """A REG_MULTI_SZ-style list ("a\0b\0\0"); a str with NULs cannot go through c_wchar_p."""
    text = "".join(i + "\0" for i in items) + "\0"
    return (ctypes.c_wchar * len(text))(*text)


class WinApi:
    """The real thing. Handles are ints; every failure raises WinApiError."""

    def __init__(self) -> None:
        if not sys.platform.startswith("win"):
            raise WinApiError("WinApi", ERROR_CALL_NOT_IMPLEMENTED)
        self.k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self.adv = ctypes.WinDLL("advapi32", use_last_error=True)
        self._keep = []  # ctypes callbacks the OS holds on to

    def _check(self, call: str, ok) -> int:
        if not ok:
            raise WinApiError(call, ctypes.get_last_error())
        return ok

    # -- service control (the running service) ------------------------------------------
    def start_dispatcher(self, name: str, service_main) -> None:
        """StartServiceCtrlDispatcherW: blocks until the service stops. Raises WinApiError
        ERROR_FAILED_SERVICE_CONTROLLER_CONNECT when not started by the SCM."""
        proto = ctypes.WINFUNCTYPE(None, wt.DWORD, ctypes.POINTER(wt.LPWSTR))
        cb = proto(lambda argc, argv: service_main([argv[i] for i in range(argc)]))
        self._keep.append(cb)
        table = (_SERVICE_TABLE_ENTRY * 2)(_SERVICE_TABLE_ENTRY(name, ctypes.cast(cb, wt.LPVOID)),
                                           _SERVICE_TABLE_ENTRY(None, None))
        self._check("StartServiceCtrlDispatcherW", self.adv.StartServiceCtrlDispatcherW(table))

    def register_handler(self, name: str, handler) -> int:
        """RegisterServiceCtrlHandlerExW; handler(control) -> Windows error code."""
        proto = ctypes.WINFUNCTYPE(wt.DWORD, wt.DWORD, wt.DWORD, wt.LPVOID, wt.LPVOID)
        cb = proto(lambda control, _etype, _edata, _ctx: handler(control))
        self._keep.append(cb)
        self.adv.RegisterServiceCtrlHandlerExW.restype = wt.HANDLE
        return self._check("RegisterServiceCtrlHandlerExW", self.adv.RegisterServiceCtrlHandlerExW(name, cb, None))

    def set_status(self, handle: int, s: ServiceStatus) -> None:
        st = _SERVICE_STATUS(SERVICE_WIN32_OWN_PROCESS, s.state, s.controls_accepted, s.win32_exit_code,
                             s.service_exit_code, s.checkpoint, s.wait_hint_ms)
        self._check("SetServiceStatus", self.adv.SetServiceStatus(wt.HANDLE(handle), ctypes.byref(st)))

    # -- the installer -----------------------------------------------------------------
    def open_scm(self) -> int:
        self.adv.OpenSCManagerW.restype = wt.HANDLE
        return self._check("OpenSCManagerW", self.adv.OpenSCManagerW(None, None, SC_MANAGER_ALL_ACCESS))

    def create_service(self, scm: int, name: str, display_name: str, command_line: str, start_type: int,
                       dependencies: tuple[str, ...]) -> int:
        """CreateServiceW as LocalSystem, own process; ERROR_SERVICE_EXISTS if it exists."""
        self.adv.CreateServiceW.restype = wt.HANDLE
        deps = _multi_sz(dependencies)
        return self._check("CreateServiceW", self.adv.CreateServiceW(
            wt.HANDLE(scm), name, display_name, SERVICE_ALL_ACCESS, SERVICE_WIN32_OWN_PROCESS, start_type,
            SERVICE_ERROR_NORMAL, command_line, None, None, deps, None, None))

    def open_service(self, scm: int, name: str) -> int:
        self.adv.OpenServiceW.restype = wt.HANDLE
        return self._check("OpenServiceW", self.adv.OpenServiceW(wt.HANDLE(scm), name, SERVICE_ALL_ACCESS))

    def change_service(self, svc: int, display_name: str, command_line: str, start_type: int,
                       dependencies: tuple[str, ...]) -> None:
        deps = _multi_sz(dependencies)
        self._check("ChangeServiceConfigW", self.adv.ChangeServiceConfigW(
            wt.HANDLE(svc), SERVICE_WIN32_OWN_PROCESS, start_type, SERVICE_ERROR_NORMAL, command_line,
            None, None, deps, None, None, display_name))

    def _config2(self, svc: int, level: int, info) -> None:
        self._check("ChangeServiceConfig2W", self.adv.ChangeServiceConfig2W(wt.HANDLE(svc), level, ctypes.byref(info)))

    def set_description(self, svc: int, text: str) -> None:
        self._config2(svc, SERVICE_CONFIG_DESCRIPTION, wt.LPWSTR(text))

    def set_failure_actions(self, svc: int, reset_period_s: int, restart_delays_ms: tuple[int, ...]) -> None:
        actions = (_SC_ACTION * len(restart_delays_ms))(*[_SC_ACTION(SC_ACTION_RESTART, d) for d in restart_delays_ms])
        self._config2(svc, SERVICE_CONFIG_FAILURE_ACTIONS,
                      _FAILURE_ACTIONS(reset_period_s, None, None, len(restart_delays_ms), actions))

    def set_failure_actions_on_non_crash(self, svc: int, on: bool) -> None:
        self._config2(svc, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, wt.BOOL(on))

    def set_delayed_auto_start(self, svc: int, on: bool) -> None:
        self._config2(svc, SERVICE_CONFIG_DELAYED_AUTO_START_INFO, wt.BOOL(on))

    def start_service(self, svc: int) -> None:
        self._check("StartServiceW", self.adv.StartServiceW(wt.HANDLE(svc), 0, None))

    def close_service_handle(self, handle: int) -> None:
        self.adv.CloseServiceHandle(wt.HANDLE(handle))

    # -- files and security descriptors --------------------------------------------------
    def _descriptor(self, sddl: str) -> wt.LPVOID:
        sd = wt.LPVOID()
        self._check("ConvertStringSecurityDescriptorToSecurityDescriptorW",
                    self.adv.ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1,
                                                                                  ctypes.byref(sd), None))
        return sd

    def owner_sid(self, path: str) -> str | None:
        """The owner of an existing file or directory; None when it does not exist."""
        import os
        if not os.path.lexists(path):
            return None
        owner, sd = wt.LPVOID(), wt.LPVOID()
        err = self.adv.GetNamedSecurityInfoW(path, 1, OWNER_SECURITY_INFORMATION, ctypes.byref(owner),
                                             None, None, None, ctypes.byref(sd))  # 1 = SE_FILE_OBJECT
        if err:
            raise WinApiError("GetNamedSecurityInfoW", err)
        try:
            return self._sid_string(owner)
        finally:
            self.k32.LocalFree(sd)

    def path_exists(self, path: str) -> bool:
        import os
        return os.path.exists(path)

    def secure_directory(self, path: str, sddl: str) -> None:
        """Create the directory if missing, then set its owner and protected DACL."""
        import os
        os.makedirs(path, exist_ok=True)
        sd = self._descriptor(sddl)
        try:
            self._check("SetFileSecurityW", self.adv.SetFileSecurityW(
                path, OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION, sd))
        finally:
            self.k32.LocalFree(sd)

    # -- named pipes ---------------------------------------------------------------------
    def create_pipe(self, name: str, sddl: str, first: bool) -> int:
        sd = self._descriptor(sddl)
        try:
            sa = _SECURITY_ATTRIBUTES(ctypes.sizeof(_SECURITY_ATTRIBUTES), sd, False)
            mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | (FILE_FLAG_FIRST_PIPE_INSTANCE if first else 0)
            self.k32.CreateNamedPipeW.restype = wt.HANDLE
            h = self.k32.CreateNamedPipeW(name, mode, PIPE_REJECT_REMOTE_CLIENTS, PIPE_UNLIMITED_INSTANCES,
                                          65536, 65536, 0, ctypes.byref(sa))
        finally:
            self.k32.LocalFree(sd)
        if h in (None, wt.HANDLE(-1).value):
            raise WinApiError("CreateNamedPipeW", ctypes.get_last_error())
        return h

    def open_pipe(self, name: str, access: int, timeout_s: float) -> int:
        """CreateFileW on the pipe (Identification level only: the server may read who we
        are, never act as us), waiting up to timeout_s while every instance is busy."""
        import time
        self.k32.CreateFileW.restype = wt.HANDLE
        deadline = time.monotonic() + timeout_s
        while True:
            h = self.k32.CreateFileW(name, access, 0, None, OPEN_EXISTING,
                                     FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, None)
            if h not in (None, wt.HANDLE(-1).value):
                return h
            err = ctypes.get_last_error()
            left_ms = int((deadline - time.monotonic()) * 1000)
            if err != ERROR_PIPE_BUSY or left_ms <= 0 or not self.k32.WaitNamedPipeW(name, left_ms):
                raise WinApiError("CreateFileW", err)

    def _io(self, call: str, handle: int, start, timeout_s: float | None) -> int:
        ov = _OVERLAPPED()
        self.k32.CreateEventW.restype = wt.HANDLE
        ov.hEvent = self._check("CreateEventW", self.k32.CreateEventW(None, True, False, None))
        try:
            n = wt.DWORD()
            if not start(ctypes.byref(ov)):
                err = ctypes.get_last_error()
                if err == ERROR_PIPE_CONNECTED:
                    return 0
                if err != ERROR_IO_PENDING:
                    raise WinApiError(call, err)
                ms = INFINITE if timeout_s is None else max(0, int(timeout_s * 1000))
                if self.k32.WaitForSingleObject(ov.hEvent, ms) == WAIT_TIMEOUT:
                    self.k32.CancelIoEx(wt.HANDLE(handle), ctypes.byref(ov))
                    self.k32.GetOverlappedResult(wt.HANDLE(handle), ctypes.byref(ov), ctypes.byref(n), True)
                    raise TimeoutError(f"{call}: no progress within {timeout_s} s")
            if not self.k32.GetOverlappedResult(wt.HANDLE(handle), ctypes.byref(ov), ctypes.byref(n), True):
                raise WinApiError(call, ctypes.get_last_error())
            return n.value
        finally:
            self.k32.CloseHandle(ov.hEvent)

    def connect_pipe(self, handle: int, timeout_s: float) -> bool:
        """ConnectNamedPipe: True once a client is connected, False on timeout."""
        try:
            self._io("ConnectNamedPipe", handle, lambda ov: self.k32.ConnectNamedPipe(wt.HANDLE(handle), ov), timeout_s)
            return True
        except TimeoutError:
            return False

    def read_pipe(self, handle: int, size: int, timeout_s: float | None) -> bytes:
        buf = ctypes.create_string_buffer(size)
        try:
            n = self._io("ReadFile", handle,
                         lambda ov: self.k32.ReadFile(wt.HANDLE(handle), buf, size, None, ov), timeout_s)
        except WinApiError as exc:
            if exc.code in (ERROR_BROKEN_PIPE, ERROR_NO_DATA):
                return b""
            raise
        return buf.raw[:n]

    def write_pipe(self, handle: int, data: bytes, timeout_s: float | None) -> None:
        done = 0
        while done < len(data):
            chunk = data[done:]
            done += self._io("WriteFile", handle,
                             lambda ov: self.k32.WriteFile(wt.HANDLE(handle), chunk, len(chunk), None, ov), timeout_s)

    def disconnect_pipe(self, handle: int) -> None:
        self.k32.FlushFileBuffers(wt.HANDLE(handle))
        self.k32.DisconnectNamedPipe(wt.HANDLE(handle))

    def close_handle(self, handle: int) -> None:
        self.k32.CloseHandle(wt.HANDLE(handle))

    # -- who is on the other end ---------------------------------------------------------
    def pipe_client(self, handle: int, impersonate: bool) -> TokenIdentity:
        """The client: with impersonate, its impersonation token (ImpersonateNamedPipeClient,
        only after data was read); else its process's token (GetNamedPipeClientProcessId)."""
        pid = wt.ULONG()
        self._check("GetNamedPipeClientProcessId",
                    self.k32.GetNamedPipeClientProcessId(wt.HANDLE(handle), ctypes.byref(pid)))
        if not impersonate:
            return self._process_identity(pid.value)
        self._check("ImpersonateNamedPipeClient", self.adv.ImpersonateNamedPipeClient(wt.HANDLE(handle)))
        token = wt.HANDLE()
        try:
            self.k32.GetCurrentThread.restype = wt.HANDLE
            self._check("OpenThreadToken", self.adv.OpenThreadToken(self.k32.GetCurrentThread(), TOKEN_QUERY,
                                                                    True, ctypes.byref(token)))
        finally:
            if not self.adv.RevertToSelf():  # never keep running as the client
                import os
                os._exit(70)
        try:
            return self._token_identity(token, pid.value)
        finally:
            self.k32.CloseHandle(token)

    def pipe_server(self, handle: int) -> TokenIdentity:
        """The process serving the pipe (a client checks it before sending anything)."""
        pid = wt.ULONG()
        self._check("GetNamedPipeServerProcessId",
                    self.k32.GetNamedPipeServerProcessId(wt.HANDLE(handle), ctypes.byref(pid)))
        return self._process_identity(pid.value)

    def _process_identity(self, pid: int) -> TokenIdentity:
        self.k32.OpenProcess.restype = wt.HANDLE
        proc = self._check("OpenProcess", self.k32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid))
        token = wt.HANDLE()
        try:
            self._check("OpenProcessToken", self.adv.OpenProcessToken(wt.HANDLE(proc), TOKEN_QUERY, ctypes.byref(token)))
        finally:
            self.k32.CloseHandle(wt.HANDLE(proc))
        try:
            return self._token_identity(token, pid)
        finally:
            self.k32.CloseHandle(token)

    def _token_info(self, token, cls: int) -> ctypes.Array:
        need = wt.DWORD()
        self.adv.GetTokenInformation(token, cls, None, 0, ctypes.byref(need))
        buf = ctypes.create_string_buffer(need.value)
        self._check("GetTokenInformation", self.adv.GetTokenInformation(token, cls, buf, need, ctypes.byref(need)))
        return buf

    def _token_identity(self, token, pid: int | None) -> TokenIdentity:
        user = _SID_AND_ATTRIBUTES.from_buffer(self._token_info(token, TOKEN_USER_CLASS))
        gbuf = self._token_info(token, TOKEN_GROUPS_CLASS)
        count = wt.DWORD.from_buffer(gbuf).value
        offset = ctypes.sizeof(ctypes.c_void_p)  # GroupCount is padded to pointer alignment
        groups = (_SID_AND_ATTRIBUTES * count).from_buffer(gbuf, offset)
        return TokenIdentity(pid, self._sid_string(user.Sid),
                             tuple((self._sid_string(g.Sid), g.Attributes) for g in groups))

    def _sid_string(self, psid) -> str:
        text = wt.LPWSTR()
        self._check("ConvertSidToStringSidW", self.adv.ConvertSidToStringSidW(psid, ctypes.byref(text)))
        try:
            return text.value
        finally:
            self.k32.LocalFree(text)
