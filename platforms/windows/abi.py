"""The Windows ABI Cordon uses: documented constants (winsvc.h, winerror.h, winbase.h,
winnt.h), the seam's error type and the values it passes (ServiceStatus, TokenIdentity).
Plain Python: importable anywhere, shared by the real seam (winapi.py), its users and tests."""
from __future__ import annotations

from dataclasses import dataclass

# winsvc.h
SERVICE_WIN32_OWN_PROCESS = 0x10
SERVICE_AUTO_START = 2
SERVICE_ERROR_NORMAL = 1
SERVICE_NO_CHANGE = 0xFFFFFFFF
SC_MANAGER_ALL_ACCESS = 0xF003F
SERVICE_ALL_ACCESS = 0xF01FF
SERVICE_CONFIG_DESCRIPTION = 1
SERVICE_CONFIG_FAILURE_ACTIONS = 2
SERVICE_CONFIG_DELAYED_AUTO_START_INFO = 3
SERVICE_CONFIG_FAILURE_ACTIONS_FLAG = 4
SC_ACTION_RESTART = 1
SERVICE_STOPPED, SERVICE_START_PENDING, SERVICE_STOP_PENDING, SERVICE_RUNNING = 1, 2, 3, 4
SERVICE_CONTROL_STOP, SERVICE_CONTROL_INTERROGATE, SERVICE_CONTROL_SHUTDOWN = 1, 4, 5
SERVICE_ACCEPT_STOP, SERVICE_ACCEPT_SHUTDOWN = 0x1, 0x4
# winerror.h
NO_ERROR = 0
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_BROKEN_PIPE = 109
ERROR_CALL_NOT_IMPLEMENTED = 120
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_PIPE_CONNECTED = 535
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997
ERROR_SERVICE_SPECIFIC_ERROR = 1066
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063
ERROR_SERVICE_EXISTS = 1073
ERROR_CANNOT_IMPERSONATE = 1368
# winbase.h / winnt.h
PIPE_ACCESS_DUPLEX = 0x3
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
FILE_FLAG_OVERLAPPED = 0x40000000
PIPE_REJECT_REMOTE_CLIENTS = 0x8
PIPE_UNLIMITED_INSTANCES = 255
OPEN_EXISTING = 3
SECURITY_SQOS_PRESENT = 0x00100000
SECURITY_IDENTIFICATION = 0x00010000
SDDL_REVISION_1 = 1
OWNER_SECURITY_INFORMATION = 0x1
DACL_SECURITY_INFORMATION = 0x4
PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000
TOKEN_QUERY = 0x8
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
TOKEN_USER_CLASS, TOKEN_GROUPS_CLASS = 1, 2
WAIT_TIMEOUT = 0x102
INFINITE = 0xFFFFFFFF


class WinApiError(Exception):
    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call} failed: Windows error {code}")
        self.call, self.code = call, code


@dataclass(frozen=True)
class ServiceStatus:
    state: int
    controls_accepted: int = 0
    win32_exit_code: int = NO_ERROR
    service_exit_code: int = 0
    checkpoint: int = 0
    wait_hint_ms: int = 0


@dataclass(frozen=True)
class TokenIdentity:
    """A token's user SID and its groups as (SID, SE_GROUP_* attributes)."""
    pid: int | None
    user_sid: str
    groups: tuple[tuple[str, int], ...]
