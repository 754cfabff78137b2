"""Turn one signed message into an engine call, or a rejection that changes nothing.

    outcome = Commands(engine, key, agent_id, guard, log).handle(subject, body, seq)

Order: parse and verify (signature, envelope, replay, stream order) -> apply through the
engine, which stores the change durably before it enforces -> remember the id and its
stream sequence durably. Only then does the caller ack. A crash before the id is stored
redelivers the command; isolate and release are idempotent and a policy comes back as
stale, so nothing is applied twice. A command stored before the last applied one (the
broker's stream sequence, the console's order) is refused: it would undo a newer one.
Release tokens (`cordon release --token`) go through the same checks, offline."""
from __future__ import annotations

from agent.channel import wire
from agent.channel.replay import ReplayGuard
from agent.channel.verify import Command, Rejected, check_envelope
from agent.errors import ApplyFailed, FieldError, InvalidInput, NotPermitted


class Commands:
    def __init__(self, engine, key, agent_id: str, guard: ReplayGuard, log) -> None:
        self.engine, self.key, self.agent_id, self.guard, self.log = engine, key, agent_id, guard, log

    def open(self, body: bytes) -> dict:
        try:
            return wire.open_body(body, self.key)
        except wire.WireError as exc:
            code = "not_permitted" if str(exc).startswith("sig:") else "invalid"
            raise Rejected(code, str(exc)) from None

    def check(self, cmd: dict, *, broadcast: bool) -> Command:
        c = check_envelope(cmd, self.agent_id, wire.utcnow(), broadcast=broadcast)
        if self.guard.seen(c.id):
            raise Rejected("not_permitted", f"cmd.id: {c.id} was already used (replayed)")
        return c

    def handle(self, subject: str, body: bytes, seq: int | None, redelivered: bool = False) -> dict:
        """Verify and apply one channel message; always returns the result event.
        `redelivered`: the broker says it delivers this stream message again (its ack was
        lost, e.g. with a cluster node). A used id is the same message, not a replay, when
        the broker says so or when its stream sequence is not past the last applied one
        (a replay is published anew, so it is stored after the original): a consumer
        whose leader moved to another node may have lost its delivery count and hand out
        an applied message as a first delivery. Only applied commands and local tokens
        are remembered, so nothing is applied again; the event says `applied`, code
        `duplicate`."""
        broadcast = subject == wire.command_subject(wire.ALL)
        cid = None
        try:
            cmd = self.open(body)
            cid = cmd["id"] if isinstance(cmd.get("id"), str) and len(cmd["id"]) <= 128 else None
            behind = seq is not None and seq <= self.guard.applied_seq
            if (redelivered or behind) and cid and self.guard.seen(cid):
                self.log.info("console_command_redelivered", command_id=cid, seq=seq, subject=subject)
                return self._event(cid, seq, "applied", "duplicate", "already applied; the broker delivered it again",
                                   self.engine.status())
            if behind:
                raise Rejected("not_permitted", f"seq {seq}: superseded, the command at stream sequence "
                               f"{self.guard.applied_seq} is newer and already applied")
            c = self.check(cmd, broadcast=broadcast)
            if c.args.get("token"):
                raise Rejected("invalid", "args.token: release tokens are for `cordon release --token`, not the channel")
            actor = {"via": "console", "command_id": c.id}
            status = self._apply(c, actor)
            self.guard.record(c.id, c.expires_at.timestamp(), seq)
        except Rejected as exc:
            self.log.warning("console_command_rejected", command_id=cid, seq=seq, subject=subject,
                             code=exc.code, reason=exc.reason)
            return self._event(cid, seq, "rejected", exc.code, exc.reason)
        except ApplyFailed as exc:  # stored, not yet in force: the watch keeps retrying
            self.log.error("console_command_failed", command_id=cid, seq=seq, reason=str(exc))
            return self._event(cid, seq, "failed", "failure", str(exc))
        except OSError as exc:      # e.g. the state dir is full: nothing accepted, so no ack
            reason = f"cannot store state: {exc.strerror or exc}"
            self.log.error("console_command_failed", command_id=cid, seq=seq, reason=reason, redeliver=True)
            return self._event(cid, seq, "failed", "failure", reason) | {"redeliver": True}
        self.log.info("console_command_applied", command_id=cid, seq=seq, action=c.action)
        ev = self._event(cid, seq, "applied", None, None, status)
        ev["_status"] = status   # the full document, for the status bucket (not sent)
        return ev

    def _apply(self, c: Command, actor: dict) -> dict:
        e = self.engine
        try:
            if c.action == "isolate":
                mode = "strict" if c.args.get("strict", False) else "standard"
                return e.isolate(mode, c.args.get("reason"), actor)
            if c.action == "release":
                return e.release(c.args.get("reason"), actor)
            return e.set_policy(c.args["policy"], actor)
        except InvalidInput as exc:  # e.g. a stale policy version: nothing was changed
            raise Rejected("invalid", "; ".join(str(x) for x in exc.errors)) from None

    def _event(self, cid, seq, outcome, code, reason, status=None) -> dict:
        ev = {"agent": self.agent_id, "id": cid, "seq": seq, "outcome": outcome, "code": code, "reason": reason}
        if status is not None:
            pol = status.get("policy", {})
            ev["status"] = {"state": status.get("state"), "mode": status.get("mode"),
                            "stored_version": pol.get("stored_version"),
                            "enforced_version": pol.get("enforced_version"),
                            "pending_version": pol.get("pending_version"),
                            "enforcing": (status.get("backend") or {}).get("enforcing")}
        return ev

    # -- offline release token --------------------------------------------------------
    def release_with_token(self, token: str, actor: dict) -> dict:
        """`cordon release --token T`: verified here, with no network. Used once."""
        try:
            c = self.check(self.open(wire.token_body(token)), broadcast=False)
        except wire.WireError as exc:
            raise Rejected("invalid", str(exc)) from None
        if c.action != "release" or not c.args.get("token"):
            raise Rejected("not_permitted", "token: not a release token (action release with args.token)")
        self.guard.record(c.id, c.expires_at.timestamp())  # used once, even if release then fails
        self.log.info("release_token_used", command_id=c.id, expires_at=wire.rfc3339(c.expires_at), **actor)
        return self.engine.release(c.args.get("reason") or "offline release token", {**actor, "token_id": c.id})


NEEDS_TOKEN = ("a console key is configured on this agent: a local release needs an offline release "
               "token signed by the console (cordon-console release-token AGENT --valid 24h, then "
               "cordon release --token TOKEN)")


def local_release(commands: Commands | None, why_unusable: str | None, args: dict, actor: dict) -> dict:
    """The control socket's `release` when [console] is configured (DESIGN §10)."""
    token = args.get("token")
    if token is None:
        raise NotPermitted(NEEDS_TOKEN)
    if commands is None:
        raise NotPermitted(f"release token cannot be checked: {why_unusable}")
    try:
        return commands.release_with_token(token, actor)
    except Rejected as exc:
        commands.log.warning("release_token_refused", code=exc.code, reason=exc.reason, **actor)
        if exc.code == "invalid":
            raise InvalidInput(FieldError("token", exc.reason), "release token") from None
        raise NotPermitted(f"release token refused: {exc.reason}") from None
