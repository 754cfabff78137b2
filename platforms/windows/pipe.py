r"""The control channel's transport on Windows: the named pipe \\.\pipe\cordon.

CPython has no AF_UNIX on Windows, so the agent's line/JSON protocol runs over a byte-mode
pipe instead; the objects here look like the few socket calls the protocol code uses
(settimeout, recv, sendall, shutdown, close).

- The pipe's DACL (acl.PIPE_SDDL) lets SYSTEM and Administrators in with full rights and
  Users with just enough to send a request and read the reply, never
  FILE_CREATE_PIPE_INSTANCE (no user can add an instance and answer our clients).
- The first instance is created with FILE_FLAG_FIRST_PIPE_INSTANCE: if anyone else already
  holds the name, the agent refuses to start rather than share it. Remote clients are rejected.
- Who the client is comes from the OS: its process token at accept (for admission, before a
  byte is read), then its impersonation token once the request is read (the one that decides
  permissions: it cannot be swapped by reusing a pid).
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from platforms.windows import acl
from platforms.windows.paths import PIPE_NAME
from platforms.windows.abi import ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_PIPE_BUSY, TokenIdentity, WinApiError
from platforms.windows.winapi import WinApi

ACCEPT_POLL_S = 0.5   # how often the accept loop looks whether it was closed


@dataclass(frozen=True)
class PipePeer:
    """A pipe end's identity: pid, user SID and the group SIDs an access check uses."""
    pid: int | None
    user_sid: str
    sids_in_force: frozenset[str]


def peer_of(identity: TokenIdentity) -> PipePeer:
    return PipePeer(identity.pid, identity.user_sid, acl.sids_in_force(list(identity.groups)))


class PipeStream:
    """One connected pipe end, with the socket calls the protocol code uses."""

    def __init__(self, api, handle: int) -> None:
        self.api, self.handle = api, handle
        self._timeout: float | None = None
        self._closed = False

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def recv(self, size: int) -> bytes:
        try:
            return self.api.read_pipe(self.handle, size, self._timeout)
        except TimeoutError:
            raise socket.timeout from None
        except WinApiError as exc:
            raise OSError(str(exc)) from None

    def sendall(self, data: bytes) -> None:
        try:
            self.api.write_pipe(self.handle, data, self._timeout)
        except TimeoutError:
            raise socket.timeout from None
        except WinApiError as exc:
            raise BrokenPipeError(str(exc)) from None

    def shutdown(self, _how=None) -> None:
        """A pipe has no half-close; the request's newline ends it."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.api.close_handle(self.handle)


class PipeConnection(PipeStream):
    """The server's end of one client connection."""

    def __init__(self, api, handle: int) -> None:
        super().__init__(api, handle)
        try:
            self.client: PipePeer | None = peer_of(api.pipe_client(handle, impersonate=False))
        except WinApiError:
            self.client = None   # unknown: no privileges, the shared pool's limits

    def client_token(self) -> PipePeer | None:
        """The client's impersonation token (valid once data has been read), or None."""
        try:
            return peer_of(self.api.pipe_client(self.handle, impersonate=True))
        except WinApiError:
            return None

    def reply_and_close(self, data: bytes, timeout_s: float) -> None:
        try:
            self.settimeout(timeout_s)
            self.sendall(data)
            self.api.disconnect_pipe(self.handle)
        except OSError:
            pass
        finally:
            self.close()


class PipeListener:
    """Instances of one pipe name, one per connection, accepted in a loop."""

    def __init__(self, name: str = PIPE_NAME, api=None) -> None:
        self.api = api if api is not None else WinApi()
        self.name = name
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self.problem: str | None = None   # why no instance is listening, while that lasts
        try:
            self._next = self.api.create_pipe(name, acl.PIPE_SDDL, first=True)
        except WinApiError as exc:
            if exc.code == ERROR_ACCESS_DENIED:
                raise OSError(f"another process is serving {name}") from None
            raise

    def serve(self, accept, work) -> None:
        """Until close(): for each client, accept(conn) in this loop (admission, nothing read
        yet); if it returns True, work(conn) on a thread of its own."""
        self._done.clear()
        try:
            while not self._stop.is_set():
                if self._next is None and not self._new_instance():
                    self._stop.wait(ACCEPT_POLL_S)   # out of handles or memory: retry, never spin
                    continue
                try:
                    if not self.api.connect_pipe(self._next, ACCEPT_POLL_S):
                        continue
                except WinApiError:   # e.g. ERROR_NO_DATA: the client left before we accepted
                    self.api.close_handle(self._next)
                    self._next = None
                    continue
                conn = PipeConnection(self.api, self._next)
                self._next = None
                self._new_instance()   # the next client's instance, before this one is served
                if accept(conn):
                    threading.Thread(target=work, args=(conn,), name="control-pipe", daemon=True).start()
        finally:
            self._done.set()

    def _new_instance(self) -> bool:
        try:
            self._next = self.api.create_pipe(self.name, acl.PIPE_SDDL, first=False)
            self.problem = None
            return True
        except WinApiError as exc:
            self.problem = f"cannot add a pipe instance: {exc}"
            return False

    def close(self) -> None:
        self._stop.set()
        self._done.wait()
        if self._next is not None:
            self.api.close_handle(self._next)


def connect(name: str, timeout_s: float, api=None) -> tuple[PipeStream, PipePeer]:
    """A client stream to the agent and the identity of the process serving the pipe (the
    caller checks it before trusting a reply). Raises FileNotFoundError (nobody serves the
    name), PermissionError (the DACL refuses us) or TimeoutError (every instance stayed busy)."""
    api = api if api is not None else WinApi()
    try:
        handle = api.open_pipe(name, acl.PIPE_CLIENT_ACCESS, timeout_s)
    except WinApiError as exc:
        if exc.code == ERROR_FILE_NOT_FOUND:
            raise FileNotFoundError(f"no pipe {name}") from None
        if exc.code == ERROR_ACCESS_DENIED:
            raise PermissionError(f"not permitted to open {name}") from None
        if exc.code == ERROR_PIPE_BUSY:
            raise TimeoutError(f"every instance of {name} stayed busy for {timeout_s:.0f} s") from None
        raise OSError(str(exc)) from None
    stream = PipeStream(api, handle)
    try:
        server = peer_of(api.pipe_server(handle))
    except WinApiError as exc:
        stream.close()
        raise OSError(f"cannot tell who serves {name}: {exc}") from None
    return stream, server
