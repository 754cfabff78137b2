"""Who is on the other end of a control connection, and whether they may change state.

The identity always comes from the operating system, never from what the client says:
- Unix socket: the peer's credentials (agent.peercred: SO_PEERCRED, LOCAL_PEERCRED);
- Windows named pipe: the client's token, read by the server (platforms.windows.pipe).
One rule decides for every transport (DESIGN §2, §7): root, or on Windows SYSTEM or an
*enabled* Administrators group (a UAC-filtered admin token holds it deny-only), may isolate,
release and set policy; everyone else may only read (status, policy show)."""
from __future__ import annotations

from dataclasses import dataclass, field

from platforms.windows.acl import SID_ADMINISTRATORS, SID_SYSTEM

ROOT = "uid:0"
PRIVILEGED = frozenset({ROOT, SID_SYSTEM, SID_ADMINISTRATORS})


@dataclass(frozen=True)
class Peer:
    pid: int | None
    account: int | str | None          # the key per-account limits use: a uid or a user SID
    principals: frozenset[str] = field(default_factory=frozenset)  # "uid:N" or SIDs in force

    def actor(self) -> dict:
        """The caller as audit events and the engine record it."""
        if isinstance(self.account, str):
            return {"caller_pid": self.pid, "caller_sid": self.account}
        return {"caller_pid": self.pid, "caller_uid": -1 if self.account is None else self.account}


UNKNOWN = Peer(None, None)


def may_change_state(peer: Peer) -> bool:
    return bool(peer.principals & PRIVILEGED)


def unix_peer(cred) -> Peer:
    """A Unix socket peer from the kernel's credentials (agent.peercred, per OS)."""
    return Peer(cred.pid, cred.uid, frozenset({f"uid:{cred.uid}"}))


def windows_peer(pid: int | None, user_sid: str, sids_in_force: frozenset[str]) -> Peer:
    """A named-pipe client: its token's user and the group SIDs enabled for access checks."""
    return Peer(pid, user_sid, frozenset({user_sid}) | sids_in_force)
