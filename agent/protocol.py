"""The local control protocol: one JSON request and one JSON response per connection,
each a single line. Versioned; sizes bounded; anything odd is a clean error reply."""
from __future__ import annotations

import json

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


class BadRequest(Exception):
    pass


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode_request(raw: bytes) -> tuple[str, dict]:
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request is not valid JSON") from None
    if not isinstance(msg, dict):
        raise BadRequest("request must be a JSON object")
    if msg.get("v") != VERSION:
        raise BadRequest(f"unsupported protocol version {msg.get('v')!r}; this agent speaks {VERSION}")
    cmd = msg.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise BadRequest(f"unknown command {cmd!r}")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object")
    return cmd, args


def ok(result: dict) -> dict:
    return {"v": VERSION, "ok": True, "result": result}


def error(code: str, message: str, errors: list[dict] | None = None) -> dict:
    return {"v": VERSION, "ok": False, "error": {"code": code, "message": message, "errors": errors or []}}
