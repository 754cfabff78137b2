"""`cordon-console`: command endpoints from the console over NATS JetStream (DESIGN §10).

    cordon-console keygen
    cordon-console isolate AGENT|all [--strict] [--reason TEXT]
    cordon-console release AGENT [--reason TEXT]
    cordon-console policy publish FILE [--agent ID]
    cordon-console release-token AGENT --valid 24h
    cordon-console fleet [--json] [--html FILE]

Each command waits for the agents' acks (--timeout) and prints one outcome per agent.
Exit codes (DESIGN §2): 0 every agent applied it · 1 failure or no ack in time ·
2 invalid input (here, or rejected as invalid by an agent) · 4 not permitted (rejected)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timezone

from agent.channel import wire
from agent.errors import EXIT_FAILURE, EXIT_INVALID, EXIT_NOT_PERMITTED, EXIT_OK, run_cli
from agent.policy import MAX_POLICY_BYTES, parse_json, validate_policy
from console.fleet_html import render_fleet
from console.session import ConsoleError, Session

DEFAULT_SERVERS = "nats://127.0.0.1:4222"


class UsageError(Exception):
    pass


def _servers(args) -> list[str]:
    raw = args.servers or os.environ.get("CORDON_CONSOLE_SERVERS") or DEFAULT_SERVERS
    return [s.strip() for s in raw.split(",") if s.strip()]


def _key(args):
    try:
        return wire.load_private_key(args.key)
    except wire.WireError as exc:
        raise UsageError(str(exc)) from None


def _target(agent: str, allow_all: bool = True) -> str:
    if agent == wire.ALL and allow_all:
        return agent
    if not wire.valid_agent_id(agent):
        raise UsageError(f"agent {agent!r}: 1 to 64 characters of A-Z a-z 0-9 _ -" + (" (or all)" if allow_all else ""))
    return agent


def _age(reported_at: str | None) -> str:
    try:
        t = wire.parse_time(reported_at, "reported_at")
    except wire.WireError:
        return "?"
    return f"{max(0, int((datetime.now(timezone.utc) - t).total_seconds()))} s ago"


def _row(agent: str, ev: dict | None, timeout: float) -> tuple[str, int]:
    if ev is None:
        return (f"{agent}: NO ACK within {timeout:g} s (queued in {wire.STREAM}; applied when the agent "
                f"connects, unless it expires first)", EXIT_FAILURE)
    if ev["outcome"] == "applied":
        st = ev.get("status") or {}
        mode = f" ({st['mode']})" if st.get("mode") else ""
        pending = f", pending {st['pending_version']}" if st.get("pending_version") else ""
        return (f"{agent}: applied: {st.get('state')}{mode}; policy stored {st.get('stored_version') or 'none'}, "
                f"enforced {st.get('enforced_version') or 'none'}{pending}; "
                f"firewall enforcing: {'yes' if st.get('enforcing') else 'NO'}", EXIT_OK)
    if ev["outcome"] == "acked":    # the broker's ack record; the result event was missed in a reconnect
        st = ev.get("status") or {}
        pol = st.get("policy") or {}
        return (f"{agent}: acked (result event missed while the console reconnected); status now: "
                f"{st.get('state')}, policy stored {pol.get('stored_version') or 'none'}, "
                f"enforced {pol.get('enforced_version') or 'none'}", EXIT_OK)
    if ev["outcome"] == "rejected":
        code = EXIT_NOT_PERMITTED if ev.get("code") == "not_permitted" else EXIT_INVALID
        return f"{agent}: REJECTED ({ev.get('code')}): {ev.get('reason')}", code
    return f"{agent}: FAILED: {ev.get('reason')}", EXIT_FAILURE


def _exit(codes: list[int]) -> int:
    for code in (EXIT_NOT_PERMITTED, EXIT_INVALID, EXIT_FAILURE):
        if code in codes:
            return code
    return EXIT_OK


async def _send(args, target: str, action: str, cmd_args: dict, policy_doc: dict | None = None) -> int:
    key = _key(args)
    valid = wire.parse_duration(args.expires)
    async with Session(_servers(args)) as s:
        fleet = await s.fleet()
        agents = sorted(fleet) if target == wire.ALL else [target]
        if policy_doc is not None:
            if "version" not in policy_doc:  # next version after the newest the targets hold
                newest = max([(fleet.get(a, {}).get("policy") or {}).get("stored_version") or 0 for a in agents] or [0])
                policy_doc = {**policy_doc, "version": newest + 1}
            cmd_args = {"policy": policy_doc}
        cmd, results = await s.command(target, action, cmd_args, key, valid, agents, args.timeout)
    print(f"{action} {cmd['id']} -> {target}" + (f" (version {policy_doc['version']})" if policy_doc else ""))
    if not agents:
        print(f"no agents in the fleet yet; the command waits in {wire.STREAM} until {cmd['expires_at']}")
        return EXIT_FAILURE
    codes = []
    for agent in agents:
        line, code = _row(agent, results[agent], args.timeout)
        print(line)
        codes.append(code)
    return _exit(codes)


# -- commands -------------------------------------------------------------------------
def cmd_keygen(args) -> int:
    pub = args.pub or os.path.splitext(args.key)[0] + ".pub"
    try:
        text = wire.write_keypair(args.key, pub)
    except FileExistsError:
        raise UsageError(f"{args.key} exists; refusing to overwrite a console key") from None
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(f"private key {args.key} (mode 0600, keep it on the console)\npublic key  {pub}: {text}\n"
          f"pin it on each agent: [console] public_key = \"/etc/cordon/console.pub\"")
    return EXIT_OK


def cmd_isolate(args) -> int:
    cmd_args = {"strict": args.strict} | ({"reason": args.reason} if args.reason else {})
    return asyncio.run(_send(args, _target(args.agent), "isolate", cmd_args))


def cmd_release(args) -> int:
    return asyncio.run(_send(args, _target(args.agent), "release", {"reason": args.reason} if args.reason else {}))


def cmd_policy_publish(args) -> int:
    try:
        with open(args.file, "rb") as f:
            doc = parse_json(f.read(MAX_POLICY_BYTES + 1))
        probe = dict(doc, version=doc.get("version", 1))
        validate_policy(probe)  # the agents check it again; stop obvious mistakes here
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    return asyncio.run(_send(args, _target(args.agent), "set_policy", {}, policy_doc=doc))


def cmd_release_token(args) -> int:
    token = wire.make_token(_target(args.agent, allow_all=False), wire.parse_duration(args.valid), _key(args), args.reason)
    print(token)
    return EXIT_OK


def cmd_fleet(args) -> int:
    async def read():
        async with Session(_servers(args)) as s:
            return await s.fleet()
    fleet = asyncio.run(read())
    rows = []
    for agent, st in fleet.items():
        pol = st.get("policy") or {}
        rows.append({"agent": agent, "state": st.get("state"), "mode": st.get("mode"),
                     "sensor_type": st.get("sensor_type"), "stored_version": pol.get("stored_version"),
                     "enforced_version": pol.get("enforced_version"), "pending_version": pol.get("pending_version"),
                     "enforcing": (st.get("backend") or {}).get("enforcing"),
                     "tamper": st.get("tamper", (st.get("backend") or {}).get("tamper")),
                     "last_seen": st.get("reported_at")})
    if args.html:
        with open(args.html, "w") as f:
            f.write(render_fleet(rows, generated=wire.rfc3339(wire.utcnow())))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    head = ("AGENT", "STATE", "MODE", "SENSOR", "STORED", "ENFORCED", "PENDING", "LAST SEEN")
    table = [head] + [(r["agent"], r["state"], r["mode"] or "-", r["sensor_type"], *(str(r[k] or "-") for k in
                      ("stored_version", "enforced_version", "pending_version")), _age(r["last_seen"])) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    if not rows:
        print("(no agents have reported yet)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--servers", default=argparse.SUPPRESS, help="NATS URLs, comma-separated "
                        f"(default $CORDON_CONSOLE_SERVERS, else {DEFAULT_SERVERS})")
    common.add_argument("--key", default=argparse.SUPPRESS, help="console private key (default $CORDON_CONSOLE_KEY, else ./console.key)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for acks (default 10)")
    common.add_argument("--expires", default=argparse.SUPPRESS, help="how long a queued command stays valid (default 24h)")
    p = argparse.ArgumentParser(prog="cordon-console", parents=[common], description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("keygen", parents=[common], help="create the console's Ed25519 key pair")
    s.add_argument("--pub", help="public key path (default: the key path with .pub)")
    s.set_defaults(func=cmd_keygen)
    s = sub.add_parser("isolate", parents=[common], help="isolate an agent, or all")
    s.add_argument("agent")
    s.add_argument("--strict", action="store_true")
    s.add_argument("--reason")
    s.set_defaults(func=cmd_isolate)
    s = sub.add_parser("release", parents=[common], help="release an agent, or all")
    s.add_argument("agent")
    s.add_argument("--reason")
    s.set_defaults(func=cmd_release)
    pol = sub.add_parser("policy", parents=[common]).add_subparsers(dest="policy_command", required=True)
    s = pol.add_parser("publish", parents=[common], help="save the exceptions policy (to all, or --agent ID)")
    s.add_argument("file")
    s.add_argument("--agent", default=wire.ALL)
    s.set_defaults(func=cmd_policy_publish)
    s = sub.add_parser("release-token", parents=[common], help="an offline release token for one agent")
    s.add_argument("agent")
    s.add_argument("--valid", required=True, help="e.g. 30m, 24h")
    s.add_argument("--reason")
    s.set_defaults(func=cmd_release_token)
    s = sub.add_parser("fleet", parents=[common], help="one row per agent from the status bucket")
    s.add_argument("--json", action="store_true")
    s.add_argument("--html", metavar="FILE", help="also write the table as a self-contained, sortable HTML page")
    s.set_defaults(func=cmd_fleet)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("servers", None), ("key", os.environ.get("CORDON_CONSOLE_KEY", "console.key")),
                          ("timeout", 10.0), ("expires", "24h")):
        if not hasattr(args, name):
            setattr(args, name, default)

    def command() -> int:
        if args.timeout <= 0:
            raise UsageError("--timeout: must be a positive number of seconds")
        return args.func(args)
    return run_cli("cordon-console", command, (((UsageError, wire.WireError), EXIT_INVALID), (ConsoleError, EXIT_FAILURE)))


if __name__ == "__main__":
    sys.exit(main())
