"""A NETLINK_NETFILTER socket that sends one nf_tables batch and reads every ack.

The socket can live in another network namespace (tests, `netns=`): it is created on a
short-lived thread that enters that namespace, never in a forked child (a fork of the
caller would inherit its signal handlers and could unwind into its code). It is kept open:
its netlink port id is what the kernel records as the table's owner.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import threading
import time

from platforms.base import BackendError
from platforms.nftables import wire as w

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 1, 10, 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NLMSGERR_ATTR_MSG = 1
ACK_TIMEOUT_S = 10.0
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class NetlinkFailure(BackendError):
    def __init__(self, text: str, code: int, msg_type: int | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.msg_type = msg_type


def open_socket(netns: str | None, proto: int = NETLINK_NETFILTER) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    return _socket_in_namespace(netns, proto)


def _socket_in_namespace(netns: str, proto: int) -> socket.socket:
    """setns(CLONE_NEWNET) moves only the calling thread, so a thread of our own enters
    the namespace, makes the socket (which keeps that namespace) and ends. Nothing forks;
    the caller's thread never leaves its namespace. A missing namespace is an OSError,
    never created as a side effect of a typo."""
    fd = os.open(os.path.join(NETNS_DIR, netns) if "/" not in netns else netns,
                 os.O_RDONLY | os.O_CLOEXEC)
    made: list = []

    def enter_and_open() -> None:
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto))
        except OSError as exc:
            made.append(exc)

    try:
        t = threading.Thread(target=enter_and_open, name=f"netns-{netns}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if isinstance(made[0], OSError):
        raise made[0]
    return made[0]


class NftSocket:
    def __init__(self, netns: str | None = None, groups: int = 0) -> None:
        self.sock = open_socket(netns)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            self.sock.setsockopt(SOL_NETLINK, opt, 1)
        self._force_buf(SO_RCVBUFFORCE, 8 << 20)
        self.sock.bind((0, 0))
        if groups:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups)
        self.portid = self.sock.getsockname()[0]
        self._seq = int(time.time()) & 0x3FFFFFFF
        self._buf = bytearray(1 << 20)

    def close(self) -> None:
        self.sock.close()

    def _force_buf(self, opt: int, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except PermissionError:
            pass  # not root: the batch will fail anyway with EPERM, reported there

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def messages(self, timeout: float | None = ACK_TIMEOUT_S):
        """Yield (type, flags, seq, pid, payload) from one recv."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            raise BackendError("nftables: no answer from the kernel (netlink timeout)")
        n = self.sock.recv_into(self._buf)
        data = memoryview(self._buf)[:n]
        off = 0
        while off + 16 <= n:
            length, kind, flags, seq, pid = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            yield kind, flags, seq, pid, bytes(data[off + 16:off + length])
            off += (length + 3) & ~3

    # --- one transaction -------------------------------------------------------------

    def batch(self, msgs: list[tuple]) -> None:
        """Send [(message name, extra flags, body[, family])] between BATCH_BEGIN and
        BATCH_END in one datagram; the kernel commits all of it or none (whatever the
        tables' families: inet and netdev go in one batch). Raise on any error ack."""
        begin = self._next_seq()
        parts, pending = [w.batch_marker(w.NFNL_MSG_BATCH_BEGIN, begin)], {}
        for name, flags, body, *family in msgs:
            seq = self._next_seq()
            pending[seq] = name
            parts.append(w.message(w.MSG[name], w.NLM_F_REQUEST | w.NLM_F_ACK | flags, seq, body,
                                   *family))
        parts.append(w.batch_marker(w.NFNL_MSG_BATCH_END, self._next_seq()))
        data = b"".join(parts)
        self._force_buf(SO_SNDBUFFORCE, len(data) + (64 << 10))
        self.sock.sendto(data, (0, 0))
        failures = []
        while pending:
            for kind, _, seq, _, payload in self.messages():
                if kind != w.NLMSG_ERROR:
                    continue
                code = -struct.unpack_from("=i", payload)[0]
                if seq == begin:  # the batch as a whole was refused (e.g. ENOMEM)
                    pending.clear()
                name = pending.pop(seq, None)
                if code:
                    failures.append((name, code, _extack(payload)))
        if failures:
            name, code, text = failures[0]
            detail = f" ({text})" if text else ""
            raise NetlinkFailure(f"nftables refused {name or 'batch'}: {os.strerror(code)}{detail}; "
                                 "nothing was changed", code, w.MSG.get(name))

    # --- reads -----------------------------------------------------------------------

    def dump(self, name: str, body: bytes = b"", family: int = w.NFPROTO_INET) -> list[bytes]:
        """All objects of one kind (NLM_F_DUMP); returns their attribute payloads."""
        seq = self._next_seq()
        self.sock.sendto(w.message(w.MSG[name], w.NLM_F_REQUEST | w.NLM_F_DUMP, seq, body, family), (0, 0))
        out = []
        while True:
            for kind, _, mseq, _, payload in self.messages():
                if mseq != seq:
                    continue
                if kind == w.NLMSG_DONE:
                    return out
                if kind == w.NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code == errno.ENOENT:
                        return out
                    raise NetlinkFailure(f"nftables dump {name}: {os.strerror(code)}", code)
                out.append(payload[4:])  # skip struct nfgenmsg

    def get(self, name: str, body: bytes, family: int = w.NFPROTO_INET) -> bytes | None:
        """One object, or None when it does not exist."""
        seq = self._next_seq()
        self.sock.sendto(w.message(w.MSG[name], w.NLM_F_REQUEST | w.NLM_F_ACK, seq, body, family), (0, 0))
        found = None
        while True:
            for kind, _, mseq, _, payload in self.messages():
                if mseq != seq:
                    continue
                if kind == w.NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code == 0:
                        return found
                    if code == errno.ENOENT:
                        return None
                    raise NetlinkFailure(f"nftables get {name}: {os.strerror(code)}", code)
                found = payload[4:]


def _extack(payload: bytes) -> str:
    # error code (4) + the original header (16, NETLINK_CAP_ACK) + TLVs
    for kind, value in w.parse_attrs(payload[20:]):
        if kind == NLMSGERR_ATTR_MSG:
            return w.cstr(value)
    return ""
