"""python -m tests.harness demo | sweep [--all] | probe NS ADDR PROTO [PORT] [--sport N]"""
from __future__ import annotations

import argparse
import asyncio
import sys


def _probe(args) -> int:
    from .probe import LocalError, new_nonce, round_trip
    family = 6 if ":" in args.addr else 4
    try:
        fail = asyncio.run(round_trip(args.ns, args.addr, args.proto, args.port, family,
                                      new_nonce(), args.timeout, args.sport))
    except LocalError as e:
        print(f"probe not sent: {e}")
        return 2
    print("reply: round trip ok" if fail is None else f"no round trip: {fail}")
    return 0 if fail is None else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.harness")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="lab + real agent: normal -> isolated -> policy update -> strict -> released")
    d.add_argument("--json", metavar="FILE", help="also write all tables as JSON")
    d.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    d.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report (grids, timeline, versions)")
    d.add_argument("--sensor-type", default="endpoint_sensor", choices=["endpoint_sensor", "security_agent"])
    d.add_argument("--keep", action="store_true", help="on a mismatch, keep the lab up until Enter (to replay)")
    s = sub.add_parser("sweep", help="remove cdn- namespaces and processes left by crashed runs")
    s.add_argument("--all", action="store_true",
                   help="also namespaces with no harness owner record (may belong to a running test)")
    p = sub.add_parser("probe", help="one round trip from a namespace (replays a table cell)")
    p.add_argument("ns")
    p.add_argument("addr")
    p.add_argument("proto", choices=["tcp", "udp", "icmp"])
    p.add_argument("port", type=int, nargs="?")
    p.add_argument("--sport", type=int)
    p.add_argument("--timeout", type=float, default=1.0)
    args = ap.parse_args(argv)
    if args.cmd == "sweep":
        from .lab import sweep
        removed = sweep(everything=args.all)
        print(f"removed {len(removed)} namespace(s)")
        return 0
    if args.cmd == "probe":
        return _probe(args)
    from .demo import demo
    return demo(json_path=args.json, junit_path=args.junit, sensor_type=args.sensor_type, keep=args.keep,
                html_path=args.html)


if __name__ == "__main__":
    sys.exit(main())
