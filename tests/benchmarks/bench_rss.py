"""Agent RSS (DESIGN §10 target: <= 45 MB with the console channel connected), on the real
agent (`cordon run`) in a lab namespace connected to a real nats-server on the vendor host,
next to the same agent without [console] measured in the same run.

Each run starts both agents afresh, waits until the channel agent's consumers are in place
and its first status is in the bucket, lets both settle, then reads VmRSS ("at rest").
Then the channel agent applies --commands isolate/release commands over the channel
(signed, published on its subject, each waited for) and VmRSS is read again ("after
commands"): what bench_fleet reads, since its agents have run a benchmark's commands
when it measures (nftables, netlink and policy code loaded, the heap grown by applies).
Prints the medians (and min/max) over --runs; --smaps also prints the channel agent's
largest mappings of the last run (where the memory is).

    sudo .venv/bin/python -m tests.benchmarks.bench_rss [--runs 5] [--commands 20] [--smaps]
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import time
from datetime import timedelta

from agent.channel import wire as fmt
from tests.harness import Lab
from tests.harness.console import Broker, Console, Wire
from tests.harness.driver import Agent
from tests.harness.lab import load_factor

SETTLE_S = 2.0   # not a wait for an event: what is measured is the resting agent


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def largest_mappings(pid: int, n: int = 12) -> list[tuple[float, str]]:
    per = collections.Counter()
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif line.startswith("Rss:"):
                per[name] += int(line.split()[1])
    return [(kb / 1024, k) for k, kb in per.most_common(n)]


def one_run(smaps: bool, commands: int) -> tuple[float, float, float, list]:
    with Lab() as lab:
        broker = Broker(lab).start()
        console = Console(lab, broker).keygen()
        plain = Agent(lab, host="outside")
        ep1 = Agent(lab, config=console.agent_config("ep1"))
        try:
            plain.start()
            ep1.start()
            console.wait_subscribed(ep1)
            with Wire(lab, broker) as w:   # until the first status document is in the bucket
                deadline = time.monotonic() + 30 * load_factor()
                while True:
                    try:
                        w.status("ep1")
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                time.sleep(SETTLE_S * load_factor())
                rest, bare = rss_mb(ep1.pid), rss_mb(plain.pid)
                key = fmt.load_private_key(console.key)
                for i in range(commands):
                    cmd = fmt.new_command("ep1", ("isolate", "release")[i % 2], {}, timedelta(hours=1))
                    w.publish(fmt.command_subject("ep1"), fmt.sign(cmd, key))
                    if w.event(id=cmd["id"], timeout=60 * load_factor())["outcome"] != "applied":
                        raise RuntimeError(f"command {i} not applied")
            time.sleep(SETTLE_S * load_factor())
            return rest, rss_mb(ep1.pid), bare, (largest_mappings(ep1.pid) if smaps else [])
        finally:
            ep1.close()
            plain.close()
            broker.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--commands", type=int, default=20, help="isolate/release over the channel before the second reading")
    ap.add_argument("--smaps", action="store_true")
    args = ap.parse_args()
    rest, after, plain, maps = [], [], [], []
    for _ in range(max(1, args.runs)):
        r, a, p, maps = one_run(args.smaps, max(0, args.commands))
        rest.append(r)
        after.append(a)
        plain.append(p)

    def line(v):
        return f"median {statistics.median(v):.1f} MB (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})"
    print(f"agent RSS, channel connected, at rest:   {line(rest)}; target <= 45 MB")
    print(f"agent RSS, after {args.commands} channel commands: {line(after)}")
    print(f"agent RSS, no [console], at rest:        {line(plain)}")
    print(f"channel cost at rest (median):           {statistics.median(rest) - statistics.median(plain):+.1f} MB")
    for mb, name in maps:
        print(f"  {mb:6.1f} MB  {name}")
    print(json.dumps({"rss_mb": {"console": round(statistics.median(rest), 1),
                                 "console_after_commands": round(statistics.median(after), 1),
                                 "plain": round(statistics.median(plain), 1)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
