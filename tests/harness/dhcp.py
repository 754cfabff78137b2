"""DHCP-shaped datagrams between lab hosts (issue 13): real BOOTP messages (RFC 2131
layout, magic cookie, a DHCP size) and look-alikes, sent from UDP port 68 or 67 to the
other, to a host or to the limited broadcast address, and whether each arrived.

`router` stands for the endpoint's link: its side of the endpoint's veth sends and
receives the broadcasts (a limited broadcast never crosses a router). A lab "DHCP
server" is any host given the DHCP_SERVER_HOST name in the topology: the test writes the
lease that names it, and its sockets here play the server.

    arrived = exchange(lab, [Datagram("endpoint", "dhcp", 68, 67, "bootp"), ...])
"""
from __future__ import annotations

import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass

from . import netns
from .lab import Host, load_factor

BROADCAST = "255.255.255.255"
COOKIE = bytes([99, 130, 83, 99])
DHCP_SERVER_HOST = Host("dhcp", "198.51.100.67/29", "2001:db8:67::67/64")
LINK = "router"  # the endpoint's link, seen from the router's side of its veth
KINDS = ("bootp", "plain", "short", "no-cookie")


def bootp(op: int, nonce: bytes, size: int = 300, cookie: bytes = COOKIE) -> bytes:
    """A BOOTP message: op (1 request, 2 reply), Ethernet, a transaction id, the broadcast
    flag, the nonce in the boot file name field (offset 108), the cookie at 236, a DHCP
    message-type option and end; zero-padded to `size` bytes (cut if smaller)."""
    head = struct.pack("!BBBBIHH", op, 1, 6, 0, int.from_bytes(nonce[:4].ljust(4, b"\0"), "big"), 0, 0x8000)
    body = head + bytes(16) + b"\x02\x00\x5e\x00\x53\x01" + bytes(10) + bytes(64)  # addrs, chaddr, sname
    body += nonce[:128].ljust(128, b"\0") + cookie + bytes([53, 1, 3 if op == 1 else 5, 255])
    return (body + bytes(max(0, size - len(body))))[:size]


def payload(kind: str, op: int, nonce: bytes) -> bytes:
    """What a datagram of `kind` carries: a BOOTP message of the op its ports mean (1 from
    the client port, 2 from the server port), a plain nonce line, a BOOTP message too
    short for DHCP, or one without the magic cookie."""
    if kind == "bootp":
        return bootp(op, nonce)
    if kind == "short":
        return bootp(op, nonce, size=200)
    if kind == "no-cookie":
        return bootp(op, nonce, cookie=bytes(4))
    return nonce + b"\n"


@dataclass(frozen=True, order=True)
class Datagram:
    src: str      # lab host, or LINK
    dst: str      # lab host, or "broadcast"
    sport: int
    dport: int
    kind: str = "bootp"

    def label(self) -> str:
        return f"{self.src}:{self.sport}->{self.dst}:{self.dport} {self.kind}"


def receiver(d: Datagram) -> tuple[str, int]:
    """Who must get `d`: (host, port). A broadcast from the endpoint reaches its link; one
    from the link reaches the endpoint."""
    if d.dst == "broadcast":
        return ("endpoint" if d.src == LINK else LINK), d.dport
    return d.dst, d.dport


def _open(lab, host: str, port: int) -> socket.socket:
    ns = lab.ns("router") if host == LINK else lab.ns(host)
    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    # On the endpoint's link only: the router's veth side, the endpoint's eth0.
    if host in (LINK, "endpoint"):
        dev = "to-endpoint" if host == LINK else "eth0"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    return s


def exchange(lab, datagrams, timeout: float = 1.0) -> dict[Datagram, bool]:
    """Send every datagram once and say which arrived at its destination port. One
    socket per (host, port) sends and receives, so a port is never bound twice. Waits
    until all arrived or `timeout` (scaled by the load) has passed."""
    socks: dict[tuple[str, int], socket.socket] = {}
    nonces: dict[bytes, Datagram] = {}
    try:
        for d in datagrams:
            for key in ((d.src, d.sport), receiver(d)):
                if key not in socks:
                    socks[key] = _open(lab, *key)
        for d in datagrams:
            nonce = secrets.token_hex(8).encode()
            nonces[nonce] = d
            dst = BROADCAST if d.dst == "broadcast" else lab.addr(d.dst, 4)
            op = 1 if (d.sport, d.dport) == (68, 67) else 2
            try:
                socks[(d.src, d.sport)].sendto(payload(d.kind, op, nonce), (dst, d.dport))
            except OSError:
                pass  # refused locally (EPERM from the output chain): it did not arrive
        arrived: dict[Datagram, bool] = {d: False for d in datagrams}
        receivers = {id(s): (key, s) for key, s in socks.items()}
        deadline = time.monotonic() + timeout * load_factor()
        while not all(arrived.values()) and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([s for _, s in receivers.values()], [], [], left)
            for s in ready:
                (host, port), _ = receivers[id(s)]
                try:
                    data = s.recv(4096)
                except OSError:
                    continue
                for nonce, d in nonces.items():
                    if nonce in data and receiver(d) == (host, port):
                        arrived[d] = True
        return arrived
    finally:
        for s in socks.values():
            s.close()


def lease_text(server: str, address: str, interface: str = "eth0", now: float | None = None) -> str:
    """An ISC dhclient lease (as /var/lib/dhcp/dhclient.leases holds it) naming `server`."""
    now = time.time() if now is None else now
    t = time.gmtime(now + 3600)
    expire = f"{(t.tm_wday + 1) % 7} {t.tm_year}/{t.tm_mon:02d}/{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return (f'lease {{\n  interface "{interface}";\n  fixed-address {address};\n'
            f"  option dhcp-lease-time 3600;\n  option dhcp-message-type 5;\n"
            f"  option dhcp-server-identifier {server};\n  expire {expire};\n}}\n")
