"""Validators shared by the policy and the config: addresses, protocols, ports.

Each returns a canonical value, so that a validated document round-trips unchanged.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BeforeValidator

from agent.errors import FieldError, InvalidInput
from platforms.plan import PortRange

Protocol = Literal["tcp", "udp", "icmp", "any"]

_DOTTED_QUAD = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")
_FORBIDDEN = [
    (ipaddress.ip_network("0.0.0.0/8"), "is in 0.0.0.0/8 (\"this network\"), never a real peer"),
    (ipaddress.ip_network("127.0.0.0/8"), "is loopback (always allowed; not an exception)"),
    (ipaddress.ip_network("224.0.0.0/4"), "is multicast"),
    (ipaddress.ip_network("240.0.0.0/4"), "is reserved (240.0.0.0/4, includes the broadcast address)"),
]


def parse_address(value: object, *, allow_cidr: bool = True) -> str:
    """One IPv4 address or (if allowed) CIDR /8–/32 → canonical string ('203.0.113.5', '203.0.113.0/24')."""
    if not isinstance(value, str):
        raise ValueError("must be a string holding an IPv4 address" + (" or CIDR" if allow_cidr else ""))
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    if not value:
        raise ValueError("must not be empty")
    host, slash, prefix = value.partition("/")
    if ":" in value:
        raise ValueError("IPv6 is not supported in exceptions (IPv6 is always blocked while isolated)")
    if not _DOTTED_QUAD.fullmatch(host):
        if re.fullmatch(r"[0-9.]+", host):
            raise ValueError(f"{host!r} is not a dotted-quad IPv4 address (four numbers 0-255, no leading zeros)")
        raise ValueError(f"{value!r} is not an IPv4 address (host names are not accepted)")
    if any(int(octet) > 255 for octet in host.split(".")):
        raise ValueError(f"{host!r} has a number above 255")
    if slash:
        if not allow_cidr:
            raise ValueError("must be a single address, not a CIDR")
        if not re.fullmatch(r"[1-9][0-9]?|0", prefix):
            raise ValueError(f"prefix {prefix!r} is not a number from 8 to 32")
        bits = int(prefix)
        if not 8 <= bits <= 32:
            raise ValueError(f"prefix /{bits} is too wide: only /8 to /32 are allowed")
        net = ipaddress.ip_network(f"{host}/{bits}", strict=False)
        if net.network_address != ipaddress.ip_address(host):
            raise ValueError(f"{value} has host bits set: did you mean {net} (the network) or {host} (one host)?")
    else:
        net = ipaddress.ip_network(host)
    if net.network_address == ipaddress.ip_address("255.255.255.255"):
        raise ValueError("is the broadcast address")
    for bad, why in _FORBIDDEN:
        if net.overlaps(bad):
            raise ValueError(f"{value} {why}")
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def parse_ports(value: object) -> str:
    """'any', '22, 3389, 5000-5010' or a JSON list of ports/ranges → canonical 'any' or '22,3389,5000-5010'."""
    if isinstance(value, str) and value.strip().lower() == "any":
        return "any"
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, list):
        if not value:
            raise ValueError("must not be an empty list (use \"any\" for every port)")
        parts = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError(f"list items must be ports or ranges, not {item!r}")
            if isinstance(item, str) and item.strip().lower() == "any":
                raise ValueError("\"any\" cannot be mixed with ports")
            parts.append(str(item).strip())
    else:
        raise ValueError("must be \"any\", a comma-separated list of ports and ranges, or a list of them")
    ranges = sorted(_parse_range(p) for p in parts)
    for prev, cur in zip(ranges, ranges[1:]):
        if cur.first <= prev.last:
            raise ValueError(f"ports {prev} and {cur} overlap")
    return ",".join(map(str, ranges))


def _parse_range(text: str) -> PortRange:
    m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", text)
    if not m:
        raise ValueError(f"{text!r} is not a port (1-65535) or a range like 5000-5010")
    first, last = int(m.group(1)), int(m.group(2) or m.group(1))
    for port in (first, last):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1-65535")
    if m.group(1).startswith("0") or (m.group(2) or "").startswith("0"):
        raise ValueError(f"{text!r}: ports have no leading zeros")
    if first > last:
        raise ValueError(f"range {text!r} runs backwards")
    return PortRange(first, last)


_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
MAX_NAME_CHARS = 64


def parse_name(value: object) -> str:
    """A display name: 1-64 printable Unicode characters (characters, not bytes); control
    characters and bidi overrides (which can make a name read as something else) rejected."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not 1 <= len(value) <= MAX_NAME_CHARS:
        raise ValueError(f"must be 1 to {MAX_NAME_CHARS} characters (this one has {len(value)})")
    for i, c in enumerate(value):
        if c in _BIDI_CONTROLS:
            raise ValueError(f"character {i + 1} is a bidirectional control (U+{ord(c):04X}), not allowed")
        if not c.isprintable():
            raise ValueError(f"character {i + 1} (U+{ord(c):04X}) is not printable")
    return value


def check_icmp_ports(protocol: str | None, ports: str) -> str:
    if protocol == "icmp" and ports != "any":
        raise ValueError("icmp has no ports: use \"any\"")
    return ports


def port_ranges(canonical: str) -> tuple[PortRange, ...]:
    """Canonical ports string → ranges; () for any."""
    if canonical == "any":
        return ()
    return tuple(_parse_range(p) for p in canonical.split(","))


Address = Annotated[str, BeforeValidator(parse_address)]
HostAddress = Annotated[str, BeforeValidator(lambda v: parse_address(v, allow_cidr=False))]
Ports = Annotated[str, BeforeValidator(parse_ports)]
Name = Annotated[str, BeforeValidator(parse_name)]


MAX_HOST_CHARS = 253
_LDH_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def parse_host(value: object) -> str:
    """A DNS name for a `host` exception (DESIGN §11): LDH labels of 1-63 characters, at
    most 253 characters, at least two labels, no wildcards, not an IP address → lower-case,
    without a trailing dot."""
    if not isinstance(value, str):
        raise ValueError("must be a string holding a DNS name")
    if not value:
        raise ValueError("must not be empty")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    name = value[:-1] if value.endswith(".") else value
    if len(name) > MAX_HOST_CHARS:
        raise ValueError(f"is {len(name)} characters long; a DNS name has at most {MAX_HOST_CHARS}")
    if "*" in name:
        raise ValueError("wildcards are not allowed: name one host")
    if not name.isascii():
        raise ValueError("must be ASCII (letters, digits, hyphens); write an internationalised name in its xn-- form")
    labels = name.lower().split(".")
    if len(labels) < 2:
        raise ValueError(f"{value!r} is not a fully qualified name (at least two labels, e.g. rmm.example.com)")
    for i, label in enumerate(labels):
        if not label:
            raise ValueError(f"label {i + 1} is empty (two dots in a row, or a leading dot)")
        if len(label) > 63:
            raise ValueError(f"label {i + 1} is {len(label)} characters long; at most 63")
        if not _LDH_LABEL.fullmatch(label):
            raise ValueError(f"label {label!r} must be letters, digits and hyphens, not starting or ending with a hyphen")
    if labels[-1].isdigit():
        raise ValueError(f"{value!r} looks like an IP address: use \"address\" for addresses")
    return ".".join(labels)


_RFC3339_UTC = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,6})?(Z|z|\+00:00)")


def parse_expires_at(value: object) -> str:
    """RFC 3339 time in UTC ('2026-12-02T15:00:00Z', '+00:00' also accepted) → canonical
    'YYYY-MM-DDTHH:MM:SS[.ffffff]Z'. Other offsets are refused so that nobody has to
    guess which clock an expiry means."""
    import datetime
    if not isinstance(value, str):
        raise ValueError("must be a string holding an RFC 3339 UTC time, e.g. \"2026-12-02T15:00:00Z\"")
    m = _RFC3339_UTC.fullmatch(value)
    if not m:
        raise ValueError(f"{value[:40]!r} is not an RFC 3339 time in UTC (e.g. \"2026-12-02T15:00:00Z\")")
    try:
        when = datetime.datetime(*(int(m.group(i)) for i in range(1, 7)),
                                 microsecond=int((m.group(7) or ".0")[1:].ljust(6, "0")),
                                 tzinfo=datetime.timezone.utc)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a real time: {exc}") from None
    return format_utc(when.timestamp())


def format_utc(epoch: float) -> str:
    import datetime
    when = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{when.microsecond:06d}" if when.microsecond else "") + "Z"


def utc_epoch(canonical: str) -> float:
    """Canonical expires_at → seconds since the epoch."""
    import datetime
    return datetime.datetime.strptime(canonical.replace("Z", "+0000"),
                                      "%Y-%m-%dT%H:%M:%S.%f%z" if "." in canonical else "%Y-%m-%dT%H:%M:%S%z").timestamp()


Host = Annotated[str, BeforeValidator(parse_host)]
ExpiresAt = Annotated[str, BeforeValidator(parse_expires_at)]


MAX_REASON = 256


def check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise InvalidInput(FieldError("reason", f"must be printable text of at most {MAX_REASON} characters"))
    return reason
