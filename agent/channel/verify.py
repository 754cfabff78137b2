"""Checks on a signed command's envelope (DESIGN §10), after its signature verified:
version, id, target agent, issue/expiry times, action and args. Pure: no I/O."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.channel.wire import ACTIONS, ALL, VERSION, WireError, parse_time, valid_agent_id

CLOCK_SKEW = timedelta(minutes=5)
MAX_ID = 128
ENVELOPE_KEYS = {"v", "id", "agent", "issued_at", "expires_at", "action", "args"}


class Rejected(Exception):
    """A command refused without any change. `code`: `not_permitted` (who/when/replay)
    or `invalid` (what); the text names the field."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Command:
    id: str
    agent: str
    action: str
    args: dict
    issued_at: datetime
    expires_at: datetime


def _args(action: str, args: object) -> dict:
    if not isinstance(args, dict):
        raise Rejected("invalid", "args: must be an object")
    allowed = {"isolate": {"strict", "reason"}, "release": {"reason", "token"}, "set_policy": {"policy"}}[action]
    extra = set(args) - allowed
    if extra:
        raise Rejected("invalid", f"args.{sorted(extra)[0]}: unknown for {action}")
    if "strict" in args and not isinstance(args["strict"], bool):
        raise Rejected("invalid", "args.strict: must be true or false")
    if "reason" in args and not isinstance(args["reason"], str):
        raise Rejected("invalid", "args.reason: must be a string")
    if "token" in args and args["token"] is not True:
        raise Rejected("invalid", "args.token: must be true when present")
    if action == "set_policy" and not isinstance(args.get("policy"), dict):
        raise Rejected("invalid", "args.policy: must be a policy object")
    return args


def check_envelope(cmd: dict, me: str, now: datetime, *, broadcast: bool) -> Command:
    """`broadcast`: the command arrived on cordon.v1.cmd.all (so `agent` must be "all")."""
    if set(cmd) != ENVELOPE_KEYS:
        missing, extra = ENVELOPE_KEYS - set(cmd), set(cmd) - ENVELOPE_KEYS
        which = f"{sorted(missing)[0]}: required" if missing else f"{sorted(extra)[0]}: unknown key"
        raise Rejected("invalid", f"cmd.{which}")
    if cmd["v"] != VERSION or isinstance(cmd["v"], bool):
        raise Rejected("invalid", f"cmd.v: unsupported version {cmd['v']!r}; this agent speaks {VERSION}")
    cid = cmd["id"]
    if not isinstance(cid, str) or not 1 <= len(cid) <= MAX_ID or not cid.isprintable():
        raise Rejected("invalid", f"cmd.id: must be 1 to {MAX_ID} printable characters")
    target = cmd["agent"]
    if target != (ALL if broadcast else me):
        shown = target if valid_agent_id(target) or target == ALL else "?"
        raise Rejected("not_permitted", f"cmd.agent: addressed to {shown!r}, not to this agent ({me})"
                       + (" on the broadcast subject" if broadcast else ""))
    try:
        issued, expires = parse_time(cmd["issued_at"], "cmd.issued_at"), parse_time(cmd["expires_at"], "cmd.expires_at")
    except WireError as exc:
        raise Rejected("invalid", str(exc)) from None
    if expires <= issued:
        raise Rejected("invalid", "cmd.expires_at: must be after issued_at")
    if issued > now + CLOCK_SKEW:
        raise Rejected("not_permitted", f"cmd.issued_at: {cmd['issued_at']} is in the future "
                       f"(more than {int(CLOCK_SKEW.total_seconds() // 60)} min ahead of this host's clock)")
    if expires <= now:
        raise Rejected("not_permitted", f"cmd.expires_at: expired at {cmd['expires_at']}")
    action = cmd["action"]
    if action not in ACTIONS:
        raise Rejected("invalid", f"cmd.action: unknown {str(action)[:32]!r}; one of {', '.join(ACTIONS)}")
    return Command(cid, target, action, _args(action, cmd["args"]), issued, expires)
