"""`cordon`: the command line (DESIGN §2). Exit codes: 0 ok · 1 failure · 2 invalid input ·
3 agent not running · 4 not permitted."""
from __future__ import annotations

import argparse
import json
import sys

from agent import client
from agent.config import Config, config_path, load_config
from agent.errors import EXIT_FAILURE, EXIT_OK, AgentNotRunning, CordonError, FieldError, InvalidInput
from agent.policy import MAX_POLICY_BYTES, parse_json, validate_policy
from platforms.base import BackendError


def _read_policy_file(path: str) -> dict:
    try:
        if path == "-":
            text = sys.stdin.buffer.read(MAX_POLICY_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                text = fh.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(FieldError("", f"cannot read {path}: {exc.strerror}"), "policy") from None
    return parse_json(text)


def _config(args) -> Config:
    return load_config(config_path(args.config))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _print_status(st: dict, *, live: bool) -> None:
    pol, be, ag = st.get("policy", {}), st.get("backend", {}), st.get("agent", {})
    state = st["state"] + (f" ({st['mode']})" if st.get("mode") else "")
    rows = [
        ("state", state),
        ("since", st.get("since") or "-"),
        ("reason", st.get("reason") or "-"),
        ("sensor type", st.get("sensor_type", "-")),
        ("policy stored", pol.get("stored_version") or "none"),
        ("policy enforced", pol.get("enforced_version") or "none"),
    ]
    if pol.get("pending_version"):
        rows.append(("policy pending", f"{pol['pending_version']} (enforced at the next isolate)"))
    if live:
        rows += [
            ("backend", be.get("name")),
            ("enforcing", "yes (read back from the firewall)" if be.get("enforcing") else "NO: rules in force differ from the plan"),
            ("survives agent exit", "yes" if be.get("survives_agent_exit") else "no: enforcement depends on the live agent"),
            *[("backend problem", p) for p in (be.get("details") or {}).get("problems", [])],
            *[("capability", f"{p['name']}: {'yes' if p['present'] else 'no'} ({p['evidence']})")
              for p in be.get("probes") or []],
            ("agent", f"pid {ag.get('pid')}, version {ag.get('version')}, up {ag.get('uptime_s')} s"),
        ]
    else:
        rows.append(("agent", "NOT RUNNING (showing the persisted state)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


# -- commands -------------------------------------------------------------------------
def cmd_run(args) -> int:
    from agent.daemon import run
    return run(_config(args))


def cmd_status(args) -> int:
    config = _config(args)
    try:
        st = client.call(config.control_socket, "status")
    except AgentNotRunning as exc:
        from agent.store import Store, StateCorrupt
        try:
            s = Store(config.state_dir).load()
        except (StateCorrupt, OSError) as err:
            print(f"cordon: {exc}; persisted state unreadable: {err}", file=sys.stderr)
            return exc.exit_code
        from agent.engine import state_view
        st = {**state_view(s, config.sensor_type), "backend": None, "agent": None}
        if args.json:
            _print_json(st)
        else:
            _print_status(st, live=False)
        print(f"cordon: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        _print_json(st)
    else:
        _print_status(st, live=True)
    return EXIT_OK


def cmd_isolate(args) -> int:
    config = _config(args)
    st = client.call(config.control_socket, "isolate", {"strict": args.strict, "reason": args.reason})
    print(f"isolated ({st['mode']}); enforcing: {'yes' if st['backend']['enforcing'] else 'NO'}")
    return EXIT_OK


def cmd_release(args) -> int:
    config = _config(args)
    request = {"reason": args.reason} | ({"token": args.token} if args.token is not None else {})
    st = client.call(config.control_socket, "release", request)
    print(f"released; rules present: {'yes' if st['backend']['rules_present'] else 'no'}")
    return EXIT_OK


def cmd_policy_set(args) -> int:
    config = _config(args)
    doc = _read_policy_file(args.file)
    st = client.call(config.control_socket, "policy_set", {"policy": doc})
    pol = st["policy"]
    where = ("enforced now" if pol["enforced_version"] == pol["stored_version"] else
             "pending until the next isolate" if pol.get("pending_version") else "stored")
    print(f"policy version {pol['stored_version']} {where}")
    return EXIT_OK


def cmd_policy_show(args) -> int:
    config = _config(args)
    shown = client.call(config.control_socket, "policy_show")
    if args.json:
        _print_json(shown)
    elif shown["stored"] is None:
        print("no policy stored")
    else:
        p = shown["stored"]
        print(f"version {p['version']}, exceptions {'ENABLED' if p['enabled'] else 'disabled'}")
        for direction in ("inbound", "outbound"):
            for e in p[direction]:
                flag = "" if e["active"] else "  (inactive)"
                print(f"  {direction:<8} {e['protocol']:<4} {e['address']:<18} ports {e['ports']:<15} {e['name'] or ''}{flag}")
    return EXIT_OK


def cmd_policy_validate(args) -> int:
    max_per_direction = 50
    if args.config:  # the limit comes from the config when one is named; no agent needed
        max_per_direction = _config(args).exceptions.max_per_direction
    try:
        policy = validate_policy(_read_policy_file(args.file), max_per_direction=max_per_direction)
    except InvalidInput as exc:
        exc.what = f"policy {args.file}"
        raise
    active = sum(e.active for e in policy.inbound + policy.outbound)
    print(f"{args.file}: valid (version {policy.version}, {'enabled' if policy.enabled else 'disabled'}, "
          f"{len(policy.inbound)} inbound, {len(policy.outbound)} outbound, {active} active)")
    return EXIT_OK


def cmd_rules(args) -> int:
    from agent.compile import check_enforceable, compile_plan
    from platforms import backend_class
    config = _config(args)
    if args.backend:
        check_enforceable(config, args.backend)
    policy = None
    if args.policy:
        policy = validate_policy(_read_policy_file(args.policy), max_per_direction=config.exceptions.max_per_direction)
    plan = compile_plan(config, policy, "strict" if args.strict else "standard")
    name = args.backend or config.backend
    print(backend_class(name, check_support=False)(state_dir=None).render(plan), end="")
    return EXIT_OK


# -- parsing --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="agent config (default: $CORDON_CONFIG, else /etc/cordon/agent.toml)")
    p = argparse.ArgumentParser(prog="cordon", parents=[common], description="Cordon endpoint isolation agent")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", parents=[common], help="run the agent (service entry point)").set_defaults(func=cmd_run)
    s = sub.add_parser("status", parents=[common], help="show state; any local user")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("isolate", parents=[common], help="isolate this host (root)")
    s.add_argument("--strict", action="store_true", help="no exceptions at all")
    s.add_argument("--reason", metavar="TEXT")
    s.set_defaults(func=cmd_isolate)
    s = sub.add_parser("release", parents=[common], help="release isolation (root)")
    s.add_argument("--reason", metavar="TEXT")
    s.add_argument("--token", metavar="TOKEN", help="offline release token from the console (needed when [console] is configured)")
    s.set_defaults(func=cmd_release)

    pol = sub.add_parser("policy", parents=[common], help="exceptions policy").add_subparsers(dest="policy_command", required=True)
    s = pol.add_parser("set", parents=[common], help="submit a policy (root)")
    s.add_argument("file", help="policy JSON file, or - for stdin")
    s.set_defaults(func=cmd_policy_set)
    s = pol.add_parser("show", parents=[common])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_policy_show)
    s = pol.add_parser("validate", parents=[common], help="check a policy file (no agent needed)")
    s.add_argument("file")
    s.set_defaults(func=cmd_policy_validate)

    s = sub.add_parser("rules", parents=[common], help="print what a backend would install")
    s.add_argument("--backend", choices=["nftables", "pf", "windivert"])
    s.add_argument("--policy", metavar="FILE")
    s.add_argument("--strict", action="store_true")
    s.set_defaults(func=cmd_rules)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        return args.func(args)
    except InvalidInput as exc:
        print(f"cordon: invalid {exc.what}:", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        return exc.exit_code
    except CordonError as exc:
        print(f"cordon: {exc}", file=sys.stderr)
        return exc.exit_code
    except BackendError as exc:  # e.g. a backend that cannot run here, or a firewall refusal
        print(f"cordon: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. the control socket or state dir cannot be created
        print(f"cordon: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
