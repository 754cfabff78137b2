"""Hand-built IP packets for tests that write to raw sockets or tun devices: the Internet
checksum (RFC 1071), IPv4 headers (fragments too), UDP and TCP segments with their
pseudo-header checksums, whole UDP packets for IPv4 and IPv6."""
from __future__ import annotations

import socket
import struct


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _af(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def _pseudo(family: int, src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = socket.inet_pton(_af(family), src), socket.inet_pton(_af(family), dst)
    return s + d + (struct.pack("!BBH", 0, proto, length) if family == 4 else struct.pack("!I3xB", length, proto))


def ipv4_header(src: str, dst: str, proto: int, payload_len: int, ident: int = 0, more: bool = False,
                offset8: int = 0) -> bytes:
    """A 20-byte IPv4 header; `more`/`offset8` (8-byte units) make it a fragment's."""
    frag = (0x2000 if more else 0) | offset8
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def ipv6_header(src: str, dst: str, next_header: int, payload_len: int) -> bytes:
    return struct.pack("!IHBB", 6 << 28, payload_len, next_header, 64) + \
        socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)


def udp_segment(family: int, src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return seg[:6] + struct.pack("!H", checksum(_pseudo(family, src, dst, 17, len(seg)) + seg) or 0xFFFF) + seg[8:]


def tcp_segment(src: str, dst: str, sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    """An IPv4 TCP segment (no options) with sequence 1000, acknowledgement 2000."""
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 0x50, flags, 4096, 0, 0) + data
    return seg[:16] + struct.pack("!H", checksum(_pseudo(4, src, dst, 6, len(seg)) + seg)) + seg[18:]


def udp_packet(family: int, src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A whole IPv4 or IPv6 UDP packet."""
    seg = udp_segment(family, src, dst, sport, dport, payload)
    if family == 6:
        return ipv6_header(src, dst, 17, len(seg)) + seg
    return ipv4_header(src, dst, 17, len(seg)) + seg
