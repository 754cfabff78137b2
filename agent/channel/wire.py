"""The console channel's wire format (DESIGN §10), shared by the agent and `cordon-console`.

A message body is `{"cmd": {...}, "sig": "<base64 Ed25519 signature of canon(cmd)>"}`;
canon(cmd) is the UTF-8 JSON of `cmd` with sorted keys and separators (",", ":").
`console.key` holds the base64 of the 32-byte private seed, `console.pub` the base64 of
the 32-byte public key. A release token is the base64url of one signed message.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from datetime import datetime, timedelta, timezone

# PyNaCl (libsodium) rather than `cryptography`: the agent only verifies Ed25519, and
# libsodium costs ~2 MB of RSS where cryptography's bindings cost ~8 MB (DESIGN §10 allows either).
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

VERSION = 1
SUBJECT_PREFIX = "cordon.v1.cmd."
EVENT_PREFIX = "cordon.v1.evt."
STREAM = "CORDON_CMD"
STREAM_SUBJECTS = "cordon.v1.cmd.>"
STREAM_MAX_AGE_S = 72 * 3600
STATUS_BUCKET = "CORDON_STATUS"
ALL = "all"
MAX_BODY_BYTES = 256 * 1024      # a §1 policy with 2 x 50 entries is a few KiB
MAX_TOKEN_CHARS = 4096
AGENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ACTIONS = ("isolate", "release", "set_policy")


class WireError(ValueError):
    """A body or key that does not follow the wire format; the text names the field."""


def command_subject(agent: str) -> str:
    return SUBJECT_PREFIX + agent


def event_subject(agent: str) -> str:
    return EVENT_PREFIX + agent


def valid_agent_id(value: object) -> bool:
    return isinstance(value, str) and AGENT_ID.fullmatch(value) is not None


# -- time ---------------------------------------------------------------------------
def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, field: str) -> datetime:
    if not isinstance(value, str) or not value.endswith("Z") or len(value) > 40:
        raise WireError(f"{field}: must be an RFC 3339 UTC time ending in Z")
    try:
        t = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        raise WireError(f"{field}: must be an RFC 3339 UTC time ending in Z") from None
    return t


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_DURATION = re.compile(r"(\d{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """"90s", "15m", "24h", "7d" -> timedelta (strictly positive)."""
    m = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise WireError(f"duration {text!r}: use a positive number with s, m, h or d (e.g. 24h)")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


# -- keys ---------------------------------------------------------------------------
def _b64_32(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WireError(f"{what}: not base64") from None
    if len(raw) != 32:
        raise WireError(f"{what}: must hold 32 bytes, found {len(raw)}")
    return raw


def _key_bytes(path: str, what: str) -> bytes:
    """The 32 bytes of a key file (base64 text), or a WireError naming the file."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise WireError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return _b64_32(text, f"{what} {path}")


def load_public_key(path: str) -> VerifyKey:
    return VerifyKey(_key_bytes(path, "console public key"))


def load_private_key(path: str) -> SigningKey:
    return SigningKey(_key_bytes(path, "console key"))


def public_text(key: VerifyKey) -> str:
    return base64.b64encode(bytes(key)).decode()


def write_keypair(key_path: str, pub_path: str) -> str:
    """Create a new key pair: the seed file 0600 (never overwritten), the public key 0644."""
    key = SigningKey.generate()
    seed = bytes(key)   # the 32-byte seed
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(seed).decode() + "\n")
    pub = public_text(key.verify_key)
    with open(pub_path, "w") as f:
        f.write(pub + "\n")
    os.chmod(pub_path, 0o644)
    return pub


# -- commands -----------------------------------------------------------------------
def canon(cmd: dict) -> bytes:
    return json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def new_command(agent: str, action: str, args: dict, valid: timedelta, now: datetime | None = None) -> dict:
    now = now or utcnow()
    return {"v": VERSION, "id": secrets.token_hex(16), "agent": agent, "issued_at": rfc3339(now),
            "expires_at": rfc3339(now + valid), "action": action, "args": args}


def sign(cmd: dict, key: SigningKey) -> bytes:
    """The message body for `cmd`."""
    sig = base64.b64encode(key.sign(canon(cmd)).signature).decode()
    return json.dumps({"cmd": cmd, "sig": sig}, separators=(",", ":")).encode("utf-8")


def open_body(body: bytes, key: VerifyKey) -> dict:
    """Parse a body and check its signature against the pinned key; return `cmd`.
    Everything after this (target, times, replay, args) is checked by the caller."""
    if len(body) > MAX_BODY_BYTES:
        raise WireError(f"message larger than {MAX_BODY_BYTES} bytes ({len(body)})")
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WireError("message is not valid UTF-8 JSON") from None
    if not isinstance(msg, dict) or set(msg) != {"cmd", "sig"}:
        raise WireError('message must be an object with exactly "cmd" and "sig"')
    cmd, sig = msg["cmd"], msg["sig"]
    if not isinstance(cmd, dict):
        raise WireError("cmd: must be an object")
    if not isinstance(sig, str) or len(sig) > 200:
        raise WireError("sig: must be a base64 string")
    try:
        raw_sig = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("sig: not base64") from None
    try:
        key.verify(canon(cmd), raw_sig)
    except (BadSignatureError, ValueError):   # ValueError: not 64 bytes
        raise WireError("sig: signature does not verify with the pinned console key") from None
    return cmd


# -- release tokens -----------------------------------------------------------------
def make_token(agent: str, valid: timedelta, key: SigningKey, reason: str | None = None) -> str:
    args = {"token": True} | ({"reason": reason} if reason else {})
    body = sign(new_command(agent, "release", args, valid), key)
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def token_body(token: str) -> bytes:
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise WireError(f"token: must be 1 to {MAX_TOKEN_CHARS} characters")
    text = token.strip()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise WireError("token: not base64url text") from None
