"""`cordon`: the command line (DESIGN §2). Exit codes: 0 ok · 1 failure · 2 invalid input ·
3 agent not running · 4 not permitted."""
from __future__ import annotations

import argparse
import json
import sys
import time

from agent import __version__, client
from agent.config import DEFAULT_PATH, Config, config_path, load_config
from agent.errors import EXIT_FAILURE, EXIT_OK, AgentNotRunning, CordonError, FieldError, InvalidInput, run_cli
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


def _enforcement_row(st: dict) -> tuple[str, str]:
    """What the firewall holds, in words that cannot be misread: in state normal, "enforcing"
    means "no Cordon rules", never "isolation enforced"."""
    be = st.get("backend") or {}
    enforcing, isolated = be.get("enforcing"), st.get("state") == "isolated"
    if enforcing is None:
        return ("firewall", f"unknown: {be.get('reason') or 'not read back'}")
    if not isolated:
        return ("firewall", "no Cordon rules installed (read back): the host is not restricted" if enforcing
                else "Cordon rules are still present although the state is normal")
    return ("isolation enforced", "yes (read back from the firewall)" if enforcing
            else "NO: the rules in force differ from what isolation needs")


def _print_hosts(hosts: list[dict]) -> None:
    """names → addresses → expiry (DESIGN §11)."""
    for h in hosts:
        if h["error"]:
            print(f"  host {h['host']} -> nothing ({h['error']})")
        else:
            print(f"  host {h['host']} -> {', '.join(h['addresses'])} (until {h['expires']})")


def _channel_row(ch: dict) -> tuple[str, str]:
    last = f"; last command {ch['last_message_at']}" if ch.get("last_message_at") else "; no command yet"
    if ch.get("connected"):
        return ("console channel", f"connected to {ch['server']} since {ch['since']} as {ch['agent_id']}{last}")
    why = ch.get("problem") or (f"retrying since {ch['since']}" if ch.get("since") else "connecting")
    return ("console channel", f"NOT connected ({', '.join(ch.get('servers') or [])}): {why}")


def _print_status(st: dict, *, live: bool) -> None:
    pol, be, ag = st.get("policy") or {}, st.get("backend") or {}, st.get("agent") or {}
    state = (st["state"] or "UNKNOWN") + (f" ({st['mode']})" if st.get("mode") else "")
    rows = [
        ("state", state),
        *([("state problem", st["state_error"])] if st.get("state_error") else []),
        ("since", st.get("since") or "-"),
        ("reason", st.get("reason") or "-"),
        ("sensor type", st.get("sensor_type", "-")),
        ("policy stored", pol.get("stored_version") or "none"),
        ("policy enforced", pol.get("enforced_version") or "none"),
    ]
    if pol.get("pending_version"):
        rows.append(("policy pending", f"{pol['pending_version']} (enforced at the next isolate)"))
    rows += [("backend", be.get("name") or "-"), _enforcement_row(st)]
    if st.get("channel"):
        rows.append(_channel_row(st["channel"]))
    if be.get("survives_agent_exit") is not None:
        rows.append(("survives agent exit", "yes" if be["survives_agent_exit"] else "no: enforcement depends on the live agent"))
    if live:
        rows += [
            *[("backend problem", p) for p in (be.get("details") or {}).get("problems", [])],
            *[("capability", f"{p['name']}: {'yes' if p['present'] else 'no'} ({p['evidence']})")
              for p in be.get("probes") or []],
            ("agent", f"pid {ag.get('pid')}, version {ag.get('version')}, up {ag.get('uptime_s')} s"),
        ]
    else:
        rows.append(("agent", "NOT RUNNING (showing the stored state)"))
    ex = st.get("exceptions") or {}
    rows += [("host exception", f"{h['host']} -> " + (f"nothing ({h['error']})" if h["error"] else
                                                      f"{', '.join(h['addresses'])} until {h['expires']}"))
             for h in ex.get("hosts", [])]
    rows += [("expiring", f"{x['exception']} at {x['expires_at']}" + (" (expired)" if x["expired"] else ""))
             for x in ex.get("expiring", [])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


# -- commands -------------------------------------------------------------------------
def cmd_run(args) -> int:
    if sys.platform.startswith("win"):
        from agent.winservice import run as run_service
        return run_service(lambda: _config(args))
    from agent.daemon import run
    return run(_config(args))


def cmd_status(args) -> int:
    config = _config(args)
    try:
        st = client.call(config.control_socket, "status")
    except AgentNotRunning as exc:
        from agent.offline_status import offline_status
        st = offline_status(config)
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
                peer = e.get("address") or e.get("host")
                until = f"  until {e['expires_at']}" if e.get("expires_at") else ""
                print(f"  {direction:<8} {e['protocol']:<4} {peer:<18} ports {e['ports']:<15} {e['name'] or ''}{flag}{until}")
        _print_hosts(shown.get("hosts") or [])
    return EXIT_OK


def cmd_policy_validate(args) -> int:
    max_per_direction, dns_servers = 50, None
    if args.config:  # the limits come from the config when one is named; no agent needed
        config = _config(args)
        max_per_direction, dns_servers = config.exceptions.max_per_direction, config.vendor.dns_servers
    try:  # as `policy set` would judge it now: an expires_at in the past is refused
        policy = validate_policy(_read_policy_file(args.file), max_per_direction=max_per_direction,
                                 now=time.time(), dns_servers=dns_servers)
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
        try:
            policy = validate_policy(_read_policy_file(args.policy), max_per_direction=config.exceptions.max_per_direction)
        except InvalidInput as exc:
            exc.what = f"policy {args.policy}"
            raise
    hosts = {}
    if policy is not None and policy.enabled and not args.strict and policy.hosts():
        from agent.resolve import HostTable  # host exceptions: what they resolve to now
        hosts = HostTable(config.vendor.dns_servers, config.exceptions.min_host_ttl).update(policy.hosts())
    from agent.dhcp_leases import leased_servers  # DHCP: the servers of the leases held now
    servers = leased_servers(config.vendor.dhcp_lease_files)[0] if config.vendor.dhcp else ()
    plan = compile_plan(config, policy, "strict" if args.strict else "standard", hosts, now=time.time(),
                        dhcp_servers=servers)
    name = args.backend or config.backend
    print(backend_class(name, check_support=False)(state_dir=None).render(plan), end="")
    return EXIT_OK


def cmd_config_check(args) -> int:
    path = args.file or config_path(args.config)
    try:
        config = load_config(path)
    except InvalidInput as exc:
        exc.what = f"config {path}"
        raise
    console = "console channel configured" if getattr(config, "console", None) else "local control only"
    print(f"{path}: valid (sensor_type {config.sensor_type}, backend {config.backend}, "
          f"{len(config.vendor.endpoints)} vendor endpoint(s), {console})")
    return EXIT_OK


# -- parsing --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help=f"agent config (default: $CORDON_CONFIG, else {DEFAULT_PATH})")
    p = argparse.ArgumentParser(prog="cordon", parents=[common], description="Cordon endpoint isolation agent",
                                epilog="exit codes: 0 ok, 1 failure, 2 invalid input, 3 agent not running, 4 not permitted")
    p.add_argument("--version", action="version", version=f"cordon {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the agent (service entry point)").set_defaults(func=cmd_run)
    s = sub.add_parser("status", parents=[common], help="show state, policy versions and what the firewall holds; any local user")
    s.add_argument("--json", action="store_true", help="print the status document as JSON")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("isolate", parents=[common], help="isolate this host (root)")
    s.add_argument("--strict", action="store_true", help="vendor only: no exceptions at all")
    s.add_argument("--reason", metavar="TEXT", help="why (kept in the state and the audit log)")
    s.set_defaults(func=cmd_isolate)
    s = sub.add_parser("release", parents=[common], help="release isolation (root)")
    s.add_argument("--reason", metavar="TEXT", help="why (kept in the state and the audit log)")
    s.add_argument("--token", metavar="TOKEN", help="offline release token from the console (needed when [console] is configured)")
    s.set_defaults(func=cmd_release)

    pol = sub.add_parser("policy", parents=[common], help="exceptions policy: set, show, validate").add_subparsers(
        dest="policy_command", required=True, metavar="ACTION")
    s = pol.add_parser("set", parents=[common], help="submit a policy (root)")
    s.add_argument("file", help="policy JSON file, or - for stdin")
    s.set_defaults(func=cmd_policy_set)
    s = pol.add_parser("show", parents=[common], help="show the stored policy")
    s.add_argument("--json", action="store_true", help="print the stored policy as JSON")
    s.set_defaults(func=cmd_policy_show)
    s = pol.add_parser("validate", parents=[common], help="check a policy file (no agent, no privileges needed)")
    s.add_argument("file", help="policy JSON file, or - for stdin")
    s.set_defaults(func=cmd_policy_validate)

    s = sub.add_parser("rules", parents=[common], help="print what a backend would install, without installing it")
    s.add_argument("--backend", choices=["nftables", "pf", "windivert"], help="backend to render for (default: the config's)")
    s.add_argument("--policy", metavar="FILE", help="exceptions policy to include (default: none)")
    s.add_argument("--strict", action="store_true", help="render strict isolation (no exceptions)")
    s.set_defaults(func=cmd_rules)

    cfg = sub.add_parser("config", parents=[common], help="agent config: check").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    s = cfg.add_parser("check", parents=[common], help="check an agent config file (exit 0 valid, 2 invalid)")
    s.add_argument("file", nargs="?", metavar="FILE", help="config to check (default: the one --config resolves to)")
    s.set_defaults(func=cmd_config_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    # BackendError: e.g. a backend that cannot run here, or a firewall refusal;
    # OSError: e.g. the control socket or state dir cannot be created.
    return run_cli("cordon", lambda: args.func(args),
                   ((CordonError, None), (BackendError, EXIT_FAILURE), (OSError, EXIT_FAILURE)))


if __name__ == "__main__":
    sys.exit(main())
