"""When did a lab namespace get its first nftables rule? Observed from the kernel, not
from the agent: a netlink socket inside the namespace, subscribed to the nftables
notification group, timestamps the first NEWRULE message (sent when the batch holding
the rule commits; Cordon's first isolation loads its tables and sets in one batch and
hooks chains and rules in a second).

Why a probe loop needs it: the kernel tracks connections in a namespace only once a
ruleset there uses conntrack (`ct` in a rule). An exchange sent while the namespace had
no rule at all is untracked; its reply, arriving after the first rules came, has
no state and cannot be told from an unsolicited packet (a UDP reply is `ct state new`
from the peer, a SYN-ACK is `invalid`), so DESIGN §1's "no stateless reply" rule drops
it and the sender's retransmission recovers the flow. A loop records such an exchange
as *crossed*, not lost: until its reply, no rule existed that could have dropped it but
the one that starts tracking. Everything sent after the first rule must pass as before.

    with FirstRule(ns) as first:      # the namespace must have no table yet
        ...
    first.at                          # time.monotonic() of the first rule, or None
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
NFT_MSG_NEWRULE = (10 << 8) | 6  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE
SO_RCVBUFFORCE = 33


class FirstRule:
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
            raise HarnessError(f"{ns} already has nftables tables ({tables!r}): its first rule "
                               "(and with it the start of connection tracking) may not be this step's")
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
                if kind == NFT_MSG_NEWRULE:
                    self.at = time.monotonic()
                    return
                off += max(16, (length + 3) & ~3)

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._sock.close()

    def __enter__(self) -> "FirstRule":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
