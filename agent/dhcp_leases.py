"""Which DHCP servers leased this host its addresses: read from the lease files its DHCP
client keeps (DESIGN §1 "DHCP (if enabled)": DHCP only to the broadcast address or the
leased server; issue 13).

Why lease files, and why once: the alternative, learning the server from the packets
(an nftables set filled by the DHCP exchange), lets whoever sends the packets choose the
server: any process that can bind port 68 (and any Internet host, for replies) could
enrol its own peer, and pf and WinDivert could not render it the same way. A lease file
is what the host's DHCP client itself recorded, read by the agent, carried in the Plan
(so every backend renders, and reads back, the same servers) and shown in `cordon
rules` and `status`. The servers are learned once, when isolation begins, and stay
pinned for as long as it lasts (a lease file written while isolated changes nothing;
`isolate` while isolated keeps them). What is left: a root attacker who planted a lease
file *before* isolation names one peer for a DHCP-shaped channel (ports 67/68, BOOTP
size and shape where the platform can check it, at most MAX_DHCP_SERVERS peers).

Read, in this order (a server counts once; at most MAX_DHCP_SERVERS, the rest dropped):
- ISC dhclient: /var/lib/dhcp/dhclient*.leases, /var/lib/dhclient/*.lease*,
  /var/lib/NetworkManager/dhclient-*.lease — per interface the last `lease { }` block
  (dhclient appends), if its `expire` is still ahead (`never` counts as ahead);
- systemd-networkd: /run/systemd/netif/leases/<ifindex> (the file exists only while the
  link holds the lease) — SERVER_ADDRESS;
- NetworkManager's internal client: /var/lib/NetworkManager/internal-*-<iface>.lease,
  the same KEY=VALUE form;
- dhcpcd: /var/lib/dhcpcd/<iface>[-ssid].lease, the raw DHCP message — option 54, and
  option 51 (lease time) from the file's time.
A lease counts only for an interface the host has now, and a server only if it is a
unicast IPv4 address (platforms.plan.check_dhcp_server).
"""
from __future__ import annotations

import calendar
import glob
import os
import re
import socket
import time
from dataclasses import dataclass

from platforms.plan import MAX_DHCP_SERVERS, check_dhcp_server, dhcp_servers_sorted

DHCLIENT = ("/var/lib/dhcp/dhclient*.leases", "/var/lib/dhclient/*.lease*",
            "/var/lib/NetworkManager/dhclient-*.lease")
NETWORKD = ("/run/systemd/netif/leases/*",)
NM_INTERNAL = ("/var/lib/NetworkManager/internal-*.lease",)
DHCPCD = ("/var/lib/dhcpcd/*.lease", "/var/lib/dhcpcd5/*.lease", "/var/db/dhcpcd/*.lease")
DEFAULT_FILES = DHCLIENT + NETWORKD + NM_INTERNAL + DHCPCD
MAX_LEASE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Lease:
    interface: str | None  # None: the file does not say (the caller then cannot check it)
    server: str
    expires: float | None  # seconds since the epoch; None = never / unknown
    source: str


def leased_servers(files=None, now: float | None = None, interfaces=None) -> tuple[tuple[str, ...], list[Lease]]:
    """(the servers, the leases they came from). `files`: paths or globs (None = the
    standard ones above); `interfaces`: names of the host's interfaces (None = ask the
    kernel); `now`: for expiry (None = the clock)."""
    now = time.time() if now is None else now
    if interfaces is None:
        interfaces = {name for _, name in socket.if_nameindex()}
    indexes = {str(socket.if_nametoindex(n)) for n in interfaces if _has_index(n)}
    leases = []
    for path in _expand(DEFAULT_FILES if files is None else files):
        leases += read_lease_file(path)
    kept, servers = [], []
    for lease in leases:
        if lease.expires is not None and lease.expires <= now:
            continue
        if lease.interface is not None and not _known(lease.interface, interfaces, indexes):
            continue
        try:
            check_dhcp_server(lease.server)
        except ValueError:
            continue
        if lease.server not in servers and len(servers) < MAX_DHCP_SERVERS:
            servers.append(lease.server)
            kept.append(lease)
    return dhcp_servers_sorted(servers), kept


def _known(interface: str, names, indexes) -> bool:
    """The host has this interface: by name, by index (networkd), or as the name before a
    dhcpcd lease's `-ssid` suffix."""
    return interface in names or interface in indexes or any(interface.startswith(n + "-") for n in names)


def _has_index(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def _expand(patterns) -> list[str]:
    out = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            if path not in out and os.path.isfile(path):
                out.append(path)
    return out


def read_lease_file(path: str) -> list[Lease]:
    """The leases one file holds, by its kind (told from its content); [] if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LEASE_BYTES)
        mtime = os.stat(path).st_mtime
    except OSError:
        return []
    if len(data) >= 240 and data[236:240] == b"\x63\x82\x53\x63":
        return dhcpcd_leases(data, _dhcpcd_interface(path), mtime, path)
    text = data.decode("utf-8", "replace")
    if re.search(r"^\s*lease\s*\{", text, re.M):
        return dhclient_leases(text, path)
    return key_value_leases(text, _kv_interface(path), mtime, path)


# --- ISC dhclient ---------------------------------------------------------------------

def _blocks(text: str):
    """The bodies of the top-level `lease { ... }` blocks, quotes respected, comments dropped."""
    body, depth, quoted, out, i = [], 0, False, [], 0
    text = "\n".join(line.split("#", 1)[0] if '"' not in line else line for line in text.splitlines())
    while i < len(text):
        c = text[i]
        if quoted:
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == "{":
            depth += 1
            if depth == 1:
                body, keep = [], re.search(r"(?:^|\s)lease\s*$", text[max(0, i - 16):i]) is not None
                i += 1
                continue
        elif c == "}":
            depth -= 1
            if depth == 0:
                if keep:
                    out.append("".join(body))
                i += 1
                continue
        if depth >= 1:
            body.append(c)
        i += 1
    return out


def dhclient_leases(text: str, source: str = "") -> list[Lease]:
    """Per interface the last lease block (the newest: dhclient appends)."""
    last: dict = {}
    for block in _blocks(text):
        stmts = [s.strip() for s in block.split(";") if s.strip()]
        iface = server = None
        expires: float | None = None
        for s in stmts:
            if m := re.fullmatch(r'interface\s+"([^"]*)"', s):
                iface = m[1]
            elif m := re.fullmatch(r"option\s+dhcp-server-identifier\s+(\S+)", s):
                server = m[1]
            elif m := re.fullmatch(r"expire\s+(.*)", s):
                expires = _dhclient_time(m[1])
        if server is not None:
            last[iface] = Lease(iface, server, expires, source)
    return list(last.values())


def _dhclient_time(text: str) -> float | None:
    """`W YYYY/MM/DD HH:MM:SS` (UTC), `epoch N`, or `never`; nonsense = already expired."""
    text = text.strip()
    if text == "never":
        return None
    if m := re.fullmatch(r"epoch\s+(\d+)", text):
        return float(m[1])
    if m := re.fullmatch(r"\d\s+(\d{4})/(\d{1,2})/(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})", text):
        try:
            return float(calendar.timegm(time.struct_time((*map(int, m.groups()), 0, 0, 0))))
        except (ValueError, OverflowError):
            return 0.0
    return 0.0


# --- systemd-networkd and NetworkManager's internal client -----------------------------

def key_value_leases(text: str, interface: str | None, mtime: float, source: str = "") -> list[Lease]:
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    server = values.get("SERVER_ADDRESS", "").strip()
    if not server:
        return []
    life = values.get("LIFETIME", "").strip()
    expires = mtime + int(life) if life.isdigit() else None
    return [Lease(interface, server, expires, source)]


def _kv_interface(path: str) -> str | None:
    name = os.path.basename(path)
    if name.isdigit():  # networkd: the file is named by the interface index
        return name
    if m := re.fullmatch(r"internal-[0-9a-fA-F-]{36}-(.+)\.lease", name):
        return m[1]
    return None


# --- dhcpcd: the raw DHCP message --------------------------------------------------------

def dhcpcd_leases(data: bytes, interface: str | None, mtime: float, source: str = "") -> list[Lease]:
    options, i = {}, 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        code, size = data[i], data[i + 1]
        options.setdefault(code, data[i + 2:i + 2 + size])
        i += 2 + size
    server, life = options.get(54, b""), options.get(51, b"")
    if len(server) != 4:
        return []
    expires = None if len(life) != 4 or life == b"\xff" * 4 else mtime + int.from_bytes(life, "big")
    return [Lease(interface, socket.inet_ntoa(server), expires, source)]


def _dhcpcd_interface(path: str) -> str | None:
    return os.path.basename(path).removesuffix(".lease") or None
