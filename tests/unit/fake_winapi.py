"""A fake of the Windows API seam (platforms.windows.winapi.WinApi) for tests: Windows cannot
run here.

Written from the Windows documentation, not from Cordon's code: its own constants, its own
SDDL parser and access check (generic rights mapped with the file/pipe generic mapping; deny
ACEs match deny-only groups, allow ACEs only enabled ones), named pipes between "processes"
(one FakeWinApi per process, each with its token) that enforce the rules a real server meets:
FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_CREATE_PIPE_INSTANCE checked against the existing pipe's
DACL, ImpersonateNamedPipeClient only after data was read. The SCM keeps the services an
installer creates (parsing the command line the way CreateProcess does) and, for a running
service, enforces the status protocol: an illegal transition, a pending state without a wait
hint or without a rising checkpoint, a control the service did not accept, all raise
ScmViolation. It also plays the recovery actions on a failure, as the SCM would.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from platforms.windows.abi import TokenIdentity, WinApiError

# -- documented values (winnt.h, winsvc.h, winerror.h) -----------------------------------
SY, BA, BU, WD, AU, IU = "S-1-5-18", "S-1-5-32-544", "S-1-5-32-545", "S-1-1-0", "S-1-5-11", "S-1-5-4"
ALIASES = {"SY": SY, "BA": BA, "BU": BU, "WD": WD, "AU": AU, "IU": IU}
GENERIC_READ, GENERIC_WRITE, GENERIC_EXECUTE, GENERIC_ALL = 0x80000000, 0x40000000, 0x20000000, 0x10000000
FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_GENERIC_EXECUTE, FILE_ALL_ACCESS = 0x120089, 0x120116, 0x1200A0, 0x1F01FF
RIGHTS = {"GA": GENERIC_ALL, "GR": GENERIC_READ, "GW": GENERIC_WRITE, "GX": GENERIC_EXECUTE,
          "FA": FILE_ALL_ACCESS, "FR": FILE_GENERIC_READ, "FW": FILE_GENERIC_WRITE, "FX": FILE_GENERIC_EXECUTE}
FILE_CREATE_PIPE_INSTANCE = 0x4
SE_GROUP_ENABLED, SE_GROUP_USE_FOR_DENY_ONLY = 0x4, 0x10
ERROR_FILE_NOT_FOUND, ERROR_ACCESS_DENIED, ERROR_BROKEN_PIPE, ERROR_PIPE_BUSY = 2, 5, 109, 231
ERROR_NO_DATA, ERROR_SERVICE_EXISTS, ERROR_CANNOT_IMPERSONATE = 232, 1073, 1368
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT, ERROR_INVALID_SERVICE_CONTROL = 1063, 1052
STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
CONTROL_STOP, CONTROL_SHUTDOWN = 1, 5
ACCEPT = {CONTROL_STOP: 0x1, CONTROL_SHUTDOWN: 0x4}
PENDING = (START_PENDING, STOP_PENDING)
LEGAL = {START_PENDING: {START_PENDING, RUNNING, STOP_PENDING, STOPPED},
         RUNNING: {RUNNING, STOP_PENDING, STOPPED},
         STOP_PENDING: {STOP_PENDING, STOPPED},
         STOPPED: set()}


class ScmViolation(AssertionError):
    pass


# The seam's declared error type (call name + Windows error code), raised as the real one is.
FakeWinError = WinApiError


# -- tokens and security descriptors -------------------------------------------------------
@dataclass(frozen=True)
class Token:
    user: str
    groups: tuple[tuple[str, int], ...] = ()
    pid: int = 1000

    def allow_sids(self) -> set[str]:
        return {self.user} | {s for s, a in self.groups if a & SE_GROUP_ENABLED and not a & SE_GROUP_USE_FOR_DENY_ONLY}

    def deny_sids(self) -> set[str]:
        return {self.user} | {s for s, a in self.groups if a & (SE_GROUP_ENABLED | SE_GROUP_USE_FOR_DENY_ONLY)}


EN = SE_GROUP_ENABLED
SYSTEM = Token(SY, ((BA, EN), (WD, EN), (AU, EN)), pid=4)
ELEVATED_ADMIN = Token("S-1-5-21-1-2-3-500", ((BA, EN), (BU, EN), (WD, EN), (AU, EN), (IU, EN)), pid=2000)
FILTERED_ADMIN = Token("S-1-5-21-1-2-3-500", ((BA, SE_GROUP_USE_FOR_DENY_ONLY), (BU, EN), (WD, EN), (AU, EN),
                                              (IU, EN)), pid=2001)
USER = Token("S-1-5-21-1-2-3-1001", ((BU, EN), (WD, EN), (AU, EN), (IU, EN)), pid=3000)
ANONYMOUS = Token("S-1-5-7", ((WD, EN),), pid=3001)


@dataclass(frozen=True)
class Ace:
    allow: bool
    flags: str
    mask: int
    sid: str


@dataclass(frozen=True)
class Descriptor:
    owner: str | None
    protected: bool
    aces: tuple[Ace, ...]


def parse_sddl(text: str) -> Descriptor:
    m = re.fullmatch(r"(?:O:(\w+))?(?:G:\w+)?D:([PAIR]*)((?:\([^)]*\))*)", text)
    if not m:
        raise ValueError(f"not an SDDL string this fake understands: {text!r}")
    owner, flags, body = m.group(1), m.group(2), m.group(3)
    aces = []
    for ace in re.findall(r"\(([^)]*)\)", body):
        kind, aflags, rights, _obj, _inh, sid = ace.split(";")
        if kind not in ("A", "D"):
            raise ValueError(f"ACE type {kind!r}")
        mask = int(rights, 16) if rights.lower().startswith("0x") else sum(
            RIGHTS[rights[i:i + 2]] for i in range(0, len(rights), 2))
        aces.append(Ace(kind == "A", aflags, mask, ALIASES.get(sid, sid)))
    return Descriptor(ALIASES.get(owner, owner) if owner else None, "P" in flags, tuple(aces))


def map_generic(mask: int) -> int:
    out = mask & ~(GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL)
    for g, f in ((GENERIC_READ, FILE_GENERIC_READ), (GENERIC_WRITE, FILE_GENERIC_WRITE),
                 (GENERIC_EXECUTE, FILE_GENERIC_EXECUTE), (GENERIC_ALL, FILE_ALL_ACCESS)):
        if mask & g:
            out |= f
    return out


def access_check(sd: Descriptor, token: Token, desired: int) -> bool:
    """Every desired right granted by allow ACEs before a deny ACE takes it (canonical order)."""
    want, granted = map_generic(desired), 0
    for ace in sd.aces:
        m = map_generic(ace.mask)
        if not ace.allow and ace.sid in token.deny_sids() and m & want & ~granted:
            return False
        if ace.allow and ace.sid in token.allow_sids():
            granted |= m
    return want & granted == want


# -- named pipes ---------------------------------------------------------------------------
@dataclass
class _End:
    inbox: bytearray = field(default_factory=bytearray)
    closed: bool = False      # this end disconnected / closed
    read_any: bool = False


@dataclass
class _Instance:
    name: str
    sd: Descriptor
    server: Token
    client: Token | None = None         # the client process's token
    client_thread: Token | None = None  # the token the client opened with (impersonation sees it)
    server_end: _End = field(default_factory=_End)
    client_end: _End = field(default_factory=_End)
    listening: bool = True


class World:
    """The OS state shared by every fake process: pipes, the SCM, files' security."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.pipes: dict[str, list[_Instance]] = {}
        self.handles: dict[int, tuple[_Instance, str]] = {}   # handle -> (instance, "server"|"client")
        self._next = 100
        from tests.unit.fake_scm import FakeScm  # the SCM half, kept in its own module
        self.scm = FakeScm(self)
        self.files: dict[str, Descriptor] = {}
        self.owners: dict[str, str] = {}
        self.plain_files: set[str] = set()   # files that exist (no security of interest)

    def new_handle(self, inst: _Instance, side: str) -> int:
        self._next += 4
        self.handles[self._next] = (inst, side)
        return self._next

    def process(self, token: Token) -> "FakeWinApi":
        return FakeWinApi(self, token)


class FakeWinApi:
    """One process's view of the API (its token is the one every call runs as)."""

    def __init__(self, world: World, token: Token) -> None:
        self.world, self.token = world, token
        self.thread_token: Token | None = None   # a thread impersonating someone else
        self.calls: list[tuple] = []

    # pipes: server side
    def create_pipe(self, name: str, sddl: str, first: bool) -> int:
        self.calls.append(("create_pipe", name, sddl, first))
        w = self.world
        with w.cv:
            existing = [i for i in w.pipes.get(name, []) if not (i.server_end.closed and i.client is None)]
            if existing:
                if first or not access_check(existing[0].sd, self.token, FILE_CREATE_PIPE_INSTANCE):
                    raise FakeWinError("CreateNamedPipeW", ERROR_ACCESS_DENIED)
                sd = existing[0].sd   # instances share the first one's security
            else:
                sd = parse_sddl(sddl)
            inst = _Instance(name, sd, self.token)
            w.pipes.setdefault(name, []).append(inst)
            w.cv.notify_all()
            return w.new_handle(inst, "server")

    def connect_pipe(self, handle: int, timeout_s: float) -> bool:
        inst, _ = self.world.handles[handle]
        with self.world.cv:
            ok = self.world.cv.wait_for(lambda: inst.client is not None or inst.server_end.closed, timeout_s) \
                and inst.client is not None
            if ok and inst.client_end.closed and not inst.server_end.inbox:
                raise FakeWinError("ConnectNamedPipe", ERROR_NO_DATA)   # it came and went already
            return ok

    def pipe_client(self, handle: int, impersonate: bool):
        inst, _ = self.world.handles[handle]
        if impersonate and not inst.server_end.read_any:
            raise FakeWinError("ImpersonateNamedPipeClient", ERROR_CANNOT_IMPERSONATE)
        t = inst.client_thread if impersonate else inst.client
        return TokenIdentity(inst.client.pid, t.user, t.groups)

    def disconnect_pipe(self, handle: int) -> None:
        self._close_end(handle)

    # pipes: client side
    def open_pipe(self, name: str, access: int, timeout_s: float) -> int:
        self.calls.append(("open_pipe", name, access))
        w = self.world
        with w.cv:
            if not w.pipes.get(name):
                raise FakeWinError("CreateFileW", ERROR_FILE_NOT_FOUND)
            free = lambda: [i for i in w.pipes.get(name, []) if i.listening and not i.server_end.closed]  # noqa: E731
            if not w.cv.wait_for(free, timeout_s):
                raise FakeWinError("CreateFileW", ERROR_PIPE_BUSY)
            inst = free()[0]
            opener = self.thread_token or self.token   # access is checked on the thread's token
            if not access_check(inst.sd, opener, access):
                raise FakeWinError("CreateFileW", ERROR_ACCESS_DENIED)
            inst.client, inst.client_thread, inst.listening = self.token, opener, False
            w.cv.notify_all()
            return w.new_handle(inst, "client")

    def pipe_server(self, handle: int):
        inst, _ = self.world.handles[handle]
        return TokenIdentity(inst.server.pid, inst.server.user, inst.server.groups)

    # pipes: both sides
    def _ends(self, handle: int) -> tuple[_End, _End]:
        inst, side = self.world.handles[handle]
        return (inst.server_end, inst.client_end) if side == "server" else (inst.client_end, inst.server_end)

    def read_pipe(self, handle: int, size: int, timeout_s: float | None) -> bytes:
        mine, theirs = self._ends(handle)
        with self.world.cv:
            if not self.world.cv.wait_for(lambda: mine.inbox or theirs.closed or mine.closed, timeout_s):
                raise TimeoutError("ReadFile")
            if not mine.inbox:
                return b""
            out = bytes(mine.inbox[:size])
            del mine.inbox[:size]
            mine.read_any = True
            return out

    def write_pipe(self, handle: int, data: bytes, timeout_s: float | None) -> None:
        mine, theirs = self._ends(handle)
        with self.world.cv:
            if theirs.closed or mine.closed:
                raise FakeWinError("WriteFile", ERROR_NO_DATA)
            theirs.inbox += data
            self.world.cv.notify_all()

    def _close_end(self, handle: int) -> None:
        mine, _ = self._ends(handle)
        with self.world.cv:
            mine.closed = True
            self.world.cv.notify_all()

    def close_handle(self, handle: int) -> None:
        if handle in self.world.handles:
            self._close_end(handle)
            with self.world.cv:
                inst, _ = self.world.handles.pop(handle)
                if inst.server_end.closed and (inst.client is None or inst.client_end.closed):
                    lst = self.world.pipes.get(inst.name, [])
                    if inst in lst:
                        lst.remove(inst)

    # files
    def path_exists(self, path: str) -> bool:
        return path in self.world.files or path in self.world.plain_files

    def owner_sid(self, path: str) -> str | None:
        return self.world.owners.get(path)

    def secure_directory(self, path: str, sddl: str) -> None:
        self.calls.append(("secure_directory", path, sddl))
        sd = parse_sddl(sddl)
        self.world.files[path] = sd
        self.world.owners[path] = sd.owner or self.token.user

    # the SCM, both sides
    def __getattr__(self, name):
        scm_calls = ("open_scm", "create_service", "open_service", "change_service", "set_description",
                     "set_failure_actions", "set_failure_actions_on_non_crash", "set_delayed_auto_start",
                     "start_service", "close_service_handle", "start_dispatcher", "register_handler", "set_status")
        if name in scm_calls:
            return getattr(self.world.scm, name)
        raise AttributeError(name)


def command_line_argv(cmd: str) -> list[str]:
    """CommandLineToArgvW's rules for the plain cases (quotes group, backslashes literal)."""
    out, cur, quoted, any_ = [], "", False, False
    for ch in cmd:
        if ch == '"':
            quoted, any_ = not quoted, True
        elif ch in " \t" and not quoted:
            if cur or any_:
                out.append(cur)
            cur, any_ = "", False
        else:
            cur += ch
    if cur or any_:
        out.append(cur)
    return out


@dataclass
class Service:
    name: str
    display_name: str
    command_line: str
    start_type: int
    dependencies: tuple[str, ...]
    description: str | None = None
    reset_period_s: int | None = None
    restart_delays_ms: tuple[int, ...] = ()
    on_non_crash: bool = False
    delayed: bool | None = None
    started: int = 0

