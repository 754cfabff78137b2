"""When did a lab namespace get its first nftables table? Observed from the kernel,
not from the agent: a netlink socket inside the namespace, subscribed to the nftables
notification group, timestamps the first NEWTABLE message.

Why a probe loop needs it: the kernel tracks connections in a namespace only once a
ruleset there uses conntrack (`ct` in a rule). An exchange sent while the namespace had
no table at all is untracked; its reply, arriving after the first isolation batch, has
no state and cannot be told from an unsolicited packet (a UDP reply is `ct state new`
from the peer, a SYN-ACK is `invalid`), so DESIGN §1's "no stateless reply" rule drops
it and the sender's retransmission recovers the flow. A loop records such an exchange
as *crossed*, not lost: it was sent before any rule existed, so no rule of Cordon's can
have lost it. Everything sent after the first table must pass as before.

    with FirstTable(ns) as first:     # the namespace must have no table yet
        ...
    first.at                          # time.monotonic() of the first table, or None
"""
from __future__ import annotations

import socket
import struct
import threading
import time

from . import netns
from .errors import HarnessError

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFT_MSG_NEWTABLE = (10 << 8) | 0  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE
SO_RCVBUFFORCE = 33


class FirstTable:
    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.at: float | None = None
        self._closing = threading.Event()
        self._sock = netns.socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        self._sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        self._sock.settimeout(0.05)
        # Subscribed first, then checked: a table created in between is both seen and
        # refused here, never missed.
        tables = netns.run_in(ns, "nft", "list", "tables").stdout.strip()
        if tables:
            self._sock.close()
            raise HarnessError(f"{ns} already has nftables tables ({tables!r}): its first table "
                               "(and with it the start of connection tracking) is not this step's")
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._closing.is_set() and self.at is None:
            try:
                data = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:  # ENOBUFS: notifications were dropped, so one was sent by now
                self.at = time.monotonic()
                return
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == NFT_MSG_NEWTABLE:
                    self.at = time.monotonic()
                    return
                off += max(16, (length + 3) & ~3)

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._sock.close()

    def __enter__(self) -> "FirstTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
