"""The exceptions policy (DESIGN §1 "Exceptions"): model, parsing and validation."""
from __future__ import annotations

from typing import Annotated

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from agent.errors import FieldError, InvalidInput, from_pydantic
from agent import protocol as _json
from agent.fields import Address, ExpiresAt, Host, Name, Ports, Protocol, check_icmp_ports, utc_epoch

MAX_POLICY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PER_DIRECTION = 50
MAX_VERSION = 2**53 - 1   # the largest integer every JSON tool exchanges exactly
_ONE_PEER = "give exactly one of \"address\" (an IPv4 address or CIDR) and \"host\" (a DNS name)"


class Exception_(BaseModel):
    """One allowed connection kind. Direction comes from the list it sits in. The peer
    is an `address` (IPv4 or CIDR) or a `host` (a DNS name the agent resolves, DESIGN
    §11), exactly one of them; `expires_at` (UTC) ends it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Name | None = None
    protocol: Protocol
    address: Address | None = None
    host: Host | None = None
    ports: Ports
    active: StrictBool = True
    expires_at: ExpiresAt | None = None

    @field_validator("ports")
    @classmethod
    def _icmp_any_port(cls, v: str, info: ValidationInfo) -> str:
        return check_icmp_ports(info.data.get("protocol"), v)

    @model_validator(mode="after")
    def _one_peer(self) -> "Exception_":
        if (self.address is None) == (self.host is None):
            raise ValueError(_ONE_PEER + ("; both are set" if self.address is not None else ""))
        return self

    @property
    def peer(self) -> str:
        return self.address if self.address is not None else self.host  # type: ignore[return-value]

    def key(self) -> tuple[str, str, str]:
        return (self.protocol, self.peer if self.address is not None else f"host:{self.host}", self.ports)

    def expires_epoch(self) -> float | None:
        return utc_epoch(self.expires_at) if self.expires_at is not None else None

    def label(self, direction: str) -> str:
        if self.name:
            return self.name
        ports = "" if self.ports == "any" else f":{self.ports}"
        return f"{direction} {self.protocol} {self.peer}{ports}"


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Annotated[StrictInt, Field(ge=1, le=MAX_VERSION)]
    enabled: StrictBool = False
    inbound: Annotated[tuple[Exception_, ...], Field(strict=False)] = ()
    outbound: Annotated[tuple[Exception_, ...], Field(strict=False)] = ()

    def active(self, direction: str) -> tuple[Exception_, ...]:
        return tuple(e for e in getattr(self, direction) if e.active)

    def hosts(self) -> tuple[str, ...]:
        """Every DNS name of an active exception, once each, sorted."""
        return tuple(sorted({e.host for d in ("inbound", "outbound") for e in self.active(d) if e.host}))

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def parse_json(text: str | bytes) -> dict:
    """Policy file text → dict, rejecting what json.loads would quietly accept (duplicate
    keys) and what would crash it (deep nesting)."""
    if len(text) > MAX_POLICY_BYTES:
        raise InvalidInput(FieldError("", f"policy document larger than {MAX_POLICY_BYTES} bytes"), "policy")
    try:
        doc = _json.loads(text)
    except _json.DuplicateKey as exc:
        raise InvalidInput(FieldError(exc.key[:64], "key appears more than once in the document"), "policy") from None
    except ValueError as exc:
        raise InvalidInput(FieldError("", f"not valid JSON: {str(exc)[:200]}"), "policy") from None
    if not isinstance(doc, dict):
        raise InvalidInput(FieldError("", "the policy must be a JSON object"), "policy")
    return doc


def validate_policy(doc: dict, *, max_per_direction: int = DEFAULT_MAX_PER_DIRECTION,
                    stored_version: int = 0, now: float | None = None,
                    dns_servers: tuple[str, ...] | None = None) -> Policy:
    """Validate a policy document. A missing version is assigned stored + 1; a version
    not greater than the stored one is rejected as stale. With `now` (seconds since the
    epoch), an `expires_at` not after it is rejected; with `dns_servers` (the config's),
    a `host` exception needs at least one (it is resolved only through them)."""
    if not isinstance(doc, dict):
        raise InvalidInput(FieldError("", "the policy must be a JSON object"), "policy")
    if "version" not in doc:
        doc = {**doc, "version": stored_version + 1}
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInput([_peer_field(e) for e in from_pydantic(exc)], "policy") from None
    problems = _cross_entry_problems(policy, max_per_direction) + _time_and_dns_problems(policy, now, dns_servers)
    if problems:
        raise InvalidInput(problems, "policy")
    if policy.version <= stored_version:
        raise InvalidInput(FieldError("version", f"{policy.version} is stale: the stored policy is version {stored_version}; send a greater version"), "policy")
    return policy


def _peer_field(err: FieldError) -> FieldError:
    """The exactly-one-peer check runs on the whole entry; name the field it is about."""
    if err.reason.startswith(_ONE_PEER):
        return FieldError(err.field + (".host" if "both are set" in err.reason else ".address"), err.reason)
    return err


def _time_and_dns_problems(policy: Policy, now: float | None, dns_servers) -> list[FieldError]:
    problems = []
    for direction in ("inbound", "outbound"):
        for i, entry in enumerate(getattr(policy, direction)):
            if now is not None and entry.expires_at is not None and entry.expires_epoch() <= now:
                problems.append(FieldError(f"{direction}[{i}].expires_at",
                                           f"{entry.expires_at} is in the past: an exception must expire in the future"))
            if dns_servers is not None and not dns_servers and entry.host is not None:
                problems.append(FieldError(f"{direction}[{i}].host",
                                           "a host exception needs [vendor].dns_servers in the agent config "
                                           "(names are resolved only through those resolvers)"))
    return problems


def _cross_entry_problems(policy: Policy, limit: int) -> list[FieldError]:
    problems = []
    for direction in ("inbound", "outbound"):
        entries = getattr(policy, direction)
        if len(entries) > limit:
            problems.append(FieldError(direction, f"{len(entries)} entries; at most {limit} are allowed (exceptions.max_per_direction)"))
        seen: dict[tuple, int] = {}
        for i, entry in enumerate(entries):
            if entry.key() in seen:
                problems.append(FieldError(f"{direction}[{i}]", f"duplicate of {direction}[{seen[entry.key()]}] (same protocol, address and ports)"))
            seen.setdefault(entry.key(), i)
    if policy.enabled and not (policy.inbound or policy.outbound):
        problems.append(FieldError("enabled", "a policy with enabled: true must hold at least one exception"))
    return problems
