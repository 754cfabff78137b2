"""Who is at the other end of a local control connection: the kernel's word, read per OS.

Linux: `SO_PEERCRED` → struct ucred {pid, uid, gid}.
macOS: `getsockopt(SOL_LOCAL, LOCAL_PEERCRED)` → struct xucred (<sys/ucred.h>; what
getpeereid(3) reads), and `LOCAL_PEERPID` for the pid:

    struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; };

cr_groups[0] is the effective gid. Anything unexpected (short answer, unknown struct
version, no reader for this OS) raises OSError: the server then treats the caller as
nobody (read-only), never as root.
"""
from __future__ import annotations

import socket
import struct
import sys
from typing import Callable, NamedTuple


class Peer(NamedTuple):
    pid: int | None
    uid: int
    gid: int


_UCRED = struct.Struct("=3i")

# <sys/un.h>, <sys/ucred.h> on Darwin
SOL_LOCAL = 0
LOCAL_PEERCRED = 0x001
LOCAL_PEERPID = 0x002
XUCRED_VERSION = 0
XU_NGROUPS = 16
_XUCRED = struct.Struct(f"=IIh2x{XU_NGROUPS}I")  # 76 bytes: the short is padded to the gid array
_PID = struct.Struct("=i")


def linux_peer(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    if len(raw) != _UCRED.size:
        raise OSError(f"SO_PEERCRED returned {len(raw)} bytes, not a struct ucred ({_UCRED.size})")
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid)


def darwin_peer(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, _XUCRED.size)
    if len(raw) != _XUCRED.size:
        raise OSError(f"LOCAL_PEERCRED returned {len(raw)} bytes, not a struct xucred ({_XUCRED.size})")
    version, uid, ngroups, *groups = _XUCRED.unpack(raw)
    if version != XUCRED_VERSION:
        raise OSError(f"LOCAL_PEERCRED returned struct xucred version {version}, not {XUCRED_VERSION}")
    if not 1 <= ngroups <= XU_NGROUPS:
        raise OSError(f"LOCAL_PEERCRED returned {ngroups} groups")
    try:
        raw_pid = sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, _PID.size)
        pid = _PID.unpack(raw_pid)[0] if len(raw_pid) == _PID.size else None
    except OSError:
        pid = None  # the pid is for the audit log only; the uid decides
    return Peer(pid, uid, groups[0])


def _unsupported(platform: str) -> Callable[[socket.socket], Peer]:
    def read(sock: socket.socket) -> Peer:
        raise OSError(f"no peer credentials reader for {platform}")
    return read


READERS: dict[str, Callable[[socket.socket], Peer]] = {"linux": linux_peer, "darwin": darwin_peer}


def reader_for(platform: str = sys.platform) -> Callable[[socket.socket], Peer]:
    return READERS.get(platform) or _unsupported(platform)
