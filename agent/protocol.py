"""The local control protocol: one JSON request and one JSON response per connection,
each a single line. Versioned; sizes bounded; anything odd is a clean error reply.

A request is exactly {"v": 1, "cmd": NAME, "args": {...}}: no other keys, `v` an integer
(not `true`), each command's argument keys and types checked (a typo such as
{"Strict": true} must never run a weaker command)."""
from __future__ import annotations

import json

from agent.errors import FieldError, InvalidInput

VERSION = 1
MAX_REQUEST_BYTES = 6 * 1024 * 1024  # a policy document is at most 4 MiB
COMMANDS = {
    # command: needs root
    "status": False,
    "policy_show": False,
    "isolate": True,
    "release": True,
    "policy_set": True,
}
# command -> argument name -> accepted JSON types
ARGS: dict[str, dict[str, tuple[type, ...]]] = {
    "status": {},
    "policy_show": {},
    "isolate": {"strict": (bool,), "reason": (str, type(None))},
    "release": {"reason": (str, type(None)), "token": (str, type(None))},
    "policy_set": {"policy": (dict,)},
}
REQUIRED = {"policy_set": ("policy",)}
_TYPE_WORDS = {bool: "true or false", str: "a string", dict: "a JSON object", type(None): "null"}


class BadRequest(Exception):
    pass


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def unique_keys(pairs: list) -> dict:
    """object_pairs_hook that rejects duplicate keys, in linear time."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKey(k)
            seen.add(k)
    return d


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key[:64]!r} appears more than once")
        self.key = key


def loads(raw: bytes | str):
    """json.loads that turns every way a document can be bad into ValueError."""
    try:
        return json.loads(raw, object_pairs_hook=unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None


def decode_request(raw: bytes) -> tuple[str, dict]:
    try:
        msg = loads(raw)
    except DuplicateKey as exc:
        raise BadRequest(f"request is not valid: {exc}") from None
    except ValueError as exc:
        raise BadRequest(f"request is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(msg, dict):
        raise BadRequest("request must be a JSON object")
    extra = sorted(set(msg) - {"v", "cmd", "args"})
    if extra:
        raise BadRequest(f"unknown request key {extra[0][:64]!r}")
    v = msg.get("v")
    if type(v) is not int or v != VERSION:
        raise BadRequest(f"unsupported protocol version {str(v)[:32]}; this agent speaks {VERSION}")
    cmd = msg.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise BadRequest(f"unknown command {str(cmd)[:64]!r}")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object")
    return cmd, args


def check_args(cmd: str, args: dict) -> None:
    """Unknown argument keys and wrong types are invalid input naming the field."""
    allowed = ARGS[cmd]
    errors = [FieldError("policy", "required") for k in REQUIRED.get(cmd, ()) if k not in args]
    errors += [FieldError(f"args.{k[:64]}", f"unknown argument for {cmd}") for k in args if k not in allowed]
    for k, types in allowed.items():
        if k in args and not isinstance(args[k], types):
            errors.append(FieldError(f"args.{k}" if k != "policy" else "policy",
                                     "must be " + " or ".join(_TYPE_WORDS[t] for t in types)))
    if errors:
        raise InvalidInput(errors, "request")


def ok(result: dict) -> dict:
    return {"v": VERSION, "ok": True, "result": result}


def error(code: str, message: str, errors: list[dict] | None = None) -> dict:
    return {"v": VERSION, "ok": False, "error": {"code": code, "message": message, "errors": errors or []}}
