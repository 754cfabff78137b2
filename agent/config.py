"""The agent config (TOML, DESIGN §2): model and loading. Unknown keys are an error."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from agent.channel.settings import ConsoleConfig, uncovered_servers
from agent.errors import FieldError, InvalidInput, from_pydantic
from agent.fields import Address, HostAddress, Name, Ports, Protocol, check_icmp_ports
from agent.paths import control_address_problem, installed

DEFAULT_PATH = installed().config  # /etc/cordon/agent.toml; macOS: /Library/Application Support/Cordon/
MAX_CONFIG_BYTES = 1024 * 1024


class VendorEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # The same field rules as a policy exception (a typo here must not fail later,
    # while isolating): field order matters, `ports` is checked against `protocol`.
    address: Address
    protocol: Protocol
    ports: Ports
    name: Name | None = None

    @field_validator("ports")
    @classmethod
    def _icmp_any_port(cls, v: str, info: ValidationInfo) -> str:
        return check_icmp_ports(info.data.get("protocol"), v)


class Vendor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # At least one: isolating with no vendor endpoint would cut the responder off the host.
    endpoints: Annotated[tuple[VendorEndpoint, ...], Field(strict=False, min_length=1)]
    dns_servers: Annotated[tuple[HostAddress, ...], Field(strict=False)] = ()
    dhcp: StrictBool = True
    # Where the host's DHCP client keeps its leases (paths or globs; absent = the standard
    # places of dhclient, systemd-networkd, NetworkManager and dhcpcd: agent/dhcp_leases.py).
    # DHCP passes only to the broadcast address and the servers these leases name.
    dhcp_lease_files: Annotated[tuple[str, ...] | None, Field(strict=False, max_length=16)] = None

    @field_validator("dhcp_lease_files")
    @classmethod
    def _absolute_lease_files(cls, v):
        for path in v or ():
            if not path or not os.path.isabs(path) or "\0" in path:
                raise ValueError(f"{path!r} must be an absolute path")
        return v


class ExceptionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_per_direction: Annotated[StrictInt, Field(ge=1, le=10_000)] = 50
    # DESIGN §11 clamps a host exception's DNS TTL to 30 s - 1 h; the lower bound can be
    # lowered (never below 1 s) where a test or a lab needs answers that change quickly.
    min_host_ttl: Annotated[StrictInt, Field(ge=1, le=3600)] = 30


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    sensor_type: Literal["endpoint_sensor", "security_agent"] = "endpoint_sensor"
    backend: Literal["auto", "nftables", "pf", "windivert"] = "auto"
    state_dir: str = Field(default_factory=lambda: installed().state_dir)            # agent.paths, per OS
    control_socket: str = Field(default_factory=lambda: installed().control_socket)
    vendor: Vendor
    exceptions: ExceptionsConfig = ExceptionsConfig()
    console: ConsoleConfig | None = None   # DESIGN §10; absent = local control only

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v or not os.path.isabs(v) or "\0" in v:
            raise ValueError("must be an absolute path")
        return v

    @field_validator("control_socket")
    @classmethod
    def _control_address(cls, v: str) -> str:
        problem = control_address_problem(v)   # a Unix socket path, or \\.\pipe\NAME on Windows
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _console_is_a_vendor_flow(self) -> "Config":
        if self.console is not None:
            bad = uncovered_servers(self.console, self.vendor.endpoints)
            if bad:
                raise ValueError(f"console.servers: {bad[0]} is not covered by [vendor].endpoints "
                                 "(isolation would cut the console channel)")
        return self

    @property
    def audit_log(self) -> Path:
        return Path(self.state_dir) / "audit.log"


def config_path(cli_value: str | None) -> str:
    """--config > $CORDON_CONFIG > this OS's installed config (agent.paths)."""
    return cli_value or os.environ.get("CORDON_CONFIG") or DEFAULT_PATH


def load_config(path: str) -> Config:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(FieldError("", f"cannot read config {path}: {exc.strerror}"), "config") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidInput(FieldError("", f"config {path} is larger than {MAX_CONFIG_BYTES} bytes"), "config")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(FieldError("", f"{path} is not valid TOML: {exc}"), "config") from None
    config = parse_config(doc)
    from agent.compile import check_enforceable  # compile imports this module
    check_enforceable(config)
    return config


def parse_config(doc: dict) -> Config:
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInput(from_pydantic(exc), "config") from None
