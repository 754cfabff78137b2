"""The exceptions policy (DESIGN §1 "Exceptions"): model, parsing and validation."""
from __future__ import annotations

import json
import string
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, ValidationInfo, field_validator

from agent.errors import FieldError, InvalidInput, from_pydantic
from agent.fields import Address, Ports, Protocol

MAX_POLICY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PER_DIRECTION = 50
_PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")


class Exception_(BaseModel):
    """One allowed connection kind. Direction comes from the list it sits in."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str | None = None
    protocol: Protocol
    address: Address
    ports: Ports
    active: StrictBool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not 1 <= len(v) <= 64:
            raise ValueError("must be 1 to 64 characters")
        if not set(v) <= _PRINTABLE:
            raise ValueError("must hold printable ASCII characters only")
        return v

    @field_validator("ports")
    @classmethod
    def _icmp_any_port(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("protocol") == "icmp" and v != "any":
            raise ValueError("icmp has no ports: use \"any\"")
        return v

    def key(self) -> tuple[str, str, str]:
        return (self.protocol, self.address, self.ports)

    def label(self, direction: str) -> str:
        if self.name:
            return self.name
        ports = "" if self.ports == "any" else f":{self.ports}"
        return f"{direction} {self.protocol} {self.address}{ports}"


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Annotated[StrictInt, Field(ge=1)]
    enabled: StrictBool = False
    inbound: Annotated[tuple[Exception_, ...], Field(strict=False)] = ()
    outbound: Annotated[tuple[Exception_, ...], Field(strict=False)] = ()

    def active(self, direction: str) -> tuple[Exception_, ...]:
        return tuple(e for e in getattr(self, direction) if e.active)

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def _reject_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise InvalidInput(FieldError(dupes[0], "key appears more than once in the document"), "policy")
    return dict(pairs)


def parse_json(text: str | bytes) -> dict:
    """Policy file text → dict, rejecting what json.loads would quietly accept (duplicate keys)."""
    if len(text) > MAX_POLICY_BYTES:
        raise InvalidInput(FieldError("", f"policy document larger than {MAX_POLICY_BYTES} bytes"), "policy")
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(FieldError("", f"not valid JSON: {exc}"), "policy") from None
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
