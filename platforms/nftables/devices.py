"""The network devices of the target namespace, over rtnetlink (NETLINK_ROUTE).

The netdev layer (netdev.py) hooks each non-loopback device by name, so the backend
lists them at every apply and listens for RTM_NEWLINK to hook devices that appear
while isolated (a veth, tun, macvlan or USB NIC added by an attacker).
"""
from __future__ import annotations

import select
import socket
import struct

from platforms.nftables.netlink import open_socket

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTMGRP_LINK = 1
IFLA_IFNAME = 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
LOOPBACK_INDEX = 1  # lo is ifindex 1 in every namespace


def _links(data: bytes):
    """(ifindex, name) of every RTM_NEWLINK message in one recv."""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == RTM_NEWLINK:
            index = struct.unpack_from("=i", data, off + 20)[0]  # struct ifinfomsg.ifi_index
            a = off + 32
            while a + 4 <= off + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind & 0x3FFF == IFLA_IFNAME:
                    yield index, data[a + 4:a + alen].split(b"\0", 1)[0].decode()
                a += (alen + 3) & ~3
        off += (length + 3) & ~3


def list_devices(netns: str | None) -> tuple[str, ...]:
    """Names of every non-loopback device, sorted."""
    sock = open_socket(netns, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        req = struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + bytes(16)
        sock.sendto(req, (0, 0))
        names, done = set(), False
        while not done:
            data = sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind in (NLMSG_DONE, NLMSG_ERROR) or length < 16:
                    done = True
                    break
                off += (length + 3) & ~3
            names |= {n for i, n in _links(data) if i != LOOPBACK_INDEX}
        return tuple(sorted(names))
    finally:
        sock.close()


class LinkWatcher:
    """Readable when a device appears or changes in the namespace (RTM_NEWLINK)."""

    def __init__(self, netns: str | None) -> None:
        self.sock = open_socket(netns, NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))

    def fileno(self) -> int:
        return self.sock.fileno()

    def wait(self, timeout: float) -> bool:
        """True if link events arrived within `timeout` s (all pending ones are read)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        while select.select([self.sock], [], [], 0)[0]:
            try:
                self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: events lost; the caller re-lists anyway
                break
        return True

    def close(self) -> None:
        self.sock.close()
