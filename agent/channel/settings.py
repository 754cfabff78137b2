"""The optional `[console]` config section (DESIGN §10) and the agent id it implies."""
from __future__ import annotations

import hashlib
import ipaddress
import os
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.channel.wire import valid_agent_id
from agent.paths import installed

MACHINE_ID = "/etc/machine-id"


def parse_server(url: str) -> tuple[str, int]:
    """'nats://198.51.100.10:4222' -> ('198.51.100.10', 4222). IPv4 literal only: the
    vendor flow that isolation keeps open is an address, never a name to resolve."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls") or parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"{url!r}: use nats://IPv4:PORT (or tls://IPv4:PORT)")
    try:
        host, port = ipaddress.IPv4Address(parts.hostname or ""), parts.port or 4222
    except ValueError:
        raise ValueError(f"{url!r}: the host must be an IPv4 address (a name would need DNS while isolated)") from None
    return str(host), port


def public_url(url: str) -> str:
    """A server URL as status shows it: scheme://IPv4:port, nothing else (no credentials)."""
    host, port = parse_server(url)
    return f"{urlsplit(url).scheme}://{host}:{port}"


class ConsoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    servers: Annotated[tuple[str, ...], Field(strict=False, min_length=1, max_length=16)]
    agent_id: str = ""
    public_key: str = Field(default_factory=lambda: installed().console_key)  # agent.paths, per OS
    credentials: str = ""

    @field_validator("servers")
    @classmethod
    def _servers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            parse_server(url)
        return v

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, v: str) -> str:
        if v and not valid_agent_id(v):
            raise ValueError("must be 1 to 64 characters of A-Z a-z 0-9 _ - (or empty: derived from /etc/machine-id)")
        return v

    @field_validator("public_key", "credentials")
    @classmethod
    def _path(cls, v: str, info) -> str:
        if (v or info.field_name == "public_key") and (not os.path.isabs(v) or "\0" in v):
            raise ValueError("must be an absolute path")
        return v


def uncovered_servers(console: ConsoleConfig, endpoints) -> list[str]:
    """Servers that no `[vendor].endpoints` entry allows (tcp or any, address, port)."""
    from agent.fields import port_ranges
    bad = []
    for url in console.servers:
        host, port = parse_server(url)
        ok = any(e.protocol in ("tcp", "any") and ipaddress.IPv4Address(host) in ipaddress.IPv4Network(e.address)
                 and (e.ports == "any" or any(r.first <= port <= r.last for r in port_ranges(e.ports)))
                 for e in endpoints)
        if not ok:
            bad.append(url)
    return bad


def agent_id(console: ConsoleConfig, machine_id_path: str = MACHINE_ID) -> str:
    """The configured id, else a stable one derived from the machine id (hashed, so the
    raw machine id never leaves the host)."""
    if console.agent_id:
        return console.agent_id
    with open(machine_id_path, encoding="ascii") as f:
        mid = f.read().strip()
    return "m-" + hashlib.sha256(b"cordon-console:" + mid.encode()).hexdigest()[:32]
