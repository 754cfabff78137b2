"""The exceptions policy (DESIGN §1 "Exceptions"): model, parsing and validation."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, ValidationInfo, field_validator

from agent.errors import FieldError, InvalidInput, from_pydantic
from agent import protocol as _json
from agent.fields import Address, Name, Ports, Protocol, check_icmp_ports

MAX_POLICY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PER_DIRECTION = 50
MAX_VERSION = 2**53 - 1   # the largest integer every JSON tool exchanges exactly


class Exception_(BaseModel):
    """One allowed connection kind. Direction comes from the list it sits in."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Name | None = None
    protocol: Protocol
    address: Address
    ports: Ports
    active: StrictBool = True

    @field_validator("ports")
    @classmethod
    def _icmp_any_port(cls, v: str, info: ValidationInfo) -> str:
        return check_icmp_ports(info.data.get("protocol"), v)

    def key(self) -> tuple[str, str, str]:
        return (self.protocol, self.address, self.ports)

    def label(self, direction: str) -> str:
        if self.name:
            return self.name
        ports = "" if self.ports == "any" else f":{self.ports}"
        return f"{direction} {self.protocol} {self.address}{ports}"


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Annotated[StrictInt, Field(ge=1, le=MAX_VERSION)]
    enabled: StrictBool = False
    inbound: Annotated[tuple[Exception_, ...], Field(strict=False)] = ()
    outbound: Annotated[tuple[Exception_, ...], Field(strict=False)] = ()

    def active(self, direction: str) -> tuple[Exception_, ...]:
        return tuple(e for e in getattr(self, direction) if e.active)

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
                    stored_version: int = 0) -> Policy:
    """Validate a policy document. A missing version is assigned stored + 1; a version
    not greater than the stored one is rejected as stale."""
    if not isinstance(doc, dict):
        raise InvalidInput(FieldError("", "the policy must be a JSON object"), "policy")
    if "version" not in doc:
        doc = {**doc, "version": stored_version + 1}
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInput(from_pydantic(exc), "policy") from None
    problems = _cross_entry_problems(policy, max_per_direction)
    if problems:
        raise InvalidInput(problems, "policy")
    if policy.version <= stored_version:
        raise InvalidInput(FieldError("version", f"{policy.version} is stale: the stored policy is version {stored_version}; send a greater version"), "policy")
    return policy


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
