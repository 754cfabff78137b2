"""Root's latency on the control socket while unprivileged users abuse it (DESIGN §7).

Prints the median and max of root's isolate/release round trips with no other clients
(the baseline, same run) and with N idle plus N flooding clients as uid 65534 (the
flooders dribble a byte every 0.2 s and reconnect when cut), and the ratio to the
baseline. The firewall is the in-memory backend: this measures the channel, not nft.

    sudo .venv/bin/python -m tests.benchmarks.bench_control [--clients 20 64] [--rounds 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

from agent import client
from tests.control_client import abusers, memory_agent
from tests.users import NOBODY


def _rounds(path, rounds):
    out = []
    for i in range(rounds):
        t0 = time.monotonic()
        if i % 2 == 0:
            client.call(path, "isolate", {"strict": True})
        else:
            client.call(path, "release", {})
        out.append((time.monotonic() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 64])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with memory_agent(prefix="cordon-bench-") as (path, _, _):
        base = _rounds(path, args.rounds)
        b = statistics.median(base)
        print(f"baseline (no other clients): median {b:.1f} ms, max {max(base):.1f} ms")
        for n in args.clients:
            with abusers(path, n, NOBODY):
                lat = _rounds(path, args.rounds)
            m = statistics.median(lat)
            print(f"{n} idle + {n} flooding uid {NOBODY} clients: median {m:.1f} ms, max {max(lat):.1f} ms, "
                  f"median ratio to baseline {m / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
