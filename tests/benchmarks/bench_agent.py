"""Agent footprint and restart speed, measured on the real agent in a lab namespace.

Prints: RSS after start and while isolated with 50+50 exceptions, idle CPU over a window,
and the time from `cordon run` to enforced isolation after a restart (the table left by
the dead agent adopted, and the table gone as after a reboot), as medians of several
runs, next to the cost of merely starting the interpreter with the agent's imports.
Targets (issue 4): RSS <= 40 MB, idle CPU <= 0.2 %, restart-to-enforced <= 300 ms.

    sudo .venv/bin/python -m tests.benchmarks.bench_agent [--runs 5] [--idle 30]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from datetime import datetime

import psutil

from tests.harness import Lab
from tests.harness.driver import Agent
from tests.harness.lab import REPO_ROOT


def policy_50_50() -> dict:
    def entries(base):
        return [{"protocol": "tcp", "address": f"{base}.{i}", "ports": f"{1000 + i}"} for i in range(1, 51)]
    return {"version": 1, "enabled": True, "inbound": entries("203.0.113"), "outbound": entries("198.51.100")}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def idle_cpu_percent(pid: int, seconds: float) -> float:
    p = psutil.Process(pid)
    t0, c0 = time.monotonic(), sum(p.cpu_times()[:2])
    time.sleep(seconds)
    return 100 * (sum(p.cpu_times()[:2]) - c0) / (time.monotonic() - t0)


def _event_time(agent: Agent, event: str, after: float) -> float | None:
    for e in agent.audit_events(event):
        t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        if t >= after:
            return t
    return None


def restart_to_enforced(agent: Agent, *, drop_table: bool) -> float:
    """kill -9, optionally remove the orphaned table (as a reboot would), start again:
    seconds from spawning `cordon run` to its `state_restored` event (applied + read back)."""
    agent.kill(signal.SIGKILL)
    if drop_table:
        agent.lab.run(agent.host, "nft", "delete", "table", "inet", "cordon")
    t0 = time.time()
    agent.start()
    t = _event_time(agent, "state_restored", t0)
    assert t is not None, "no state_restored event"
    st = agent.status()
    assert st["state"] == "isolated" and st["backend"]["enforcing"], st
    return t - t0


def import_baseline(lab: Lab) -> float:
    """Seconds to start the interpreter and import what `cordon run` imports, then exit."""
    code = "import agent.daemon, platforms.nftables"
    t0 = time.time()
    lab.run("endpoint", sys.executable, "-c", code)
    return time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=30.0, help="idle CPU window, seconds")
    args = ap.parse_args()
    os.chdir(REPO_ROOT)
    with Lab() as lab:
        agent = Agent(lab, backend="nftables")
        try:
            agent.start()
            time.sleep(0.5)
            rss_start = rss_mb(agent.pid)
            agent.policy_set(policy_50_50())
            agent.isolate(reason="benchmark")
            rss_isolated = rss_mb(agent.pid)
            cpu = idle_cpu_percent(agent.pid, args.idle)
            adopt = [restart_to_enforced(agent, drop_table=False) for _ in range(args.runs)]
            fresh = [restart_to_enforced(agent, drop_table=True) for _ in range(args.runs)]
            rss_after_restarts = rss_mb(agent.pid)
            base = [import_baseline(lab) for _ in range(args.runs)]
            agent.release()
        finally:
            agent.close()
    med = statistics.median
    print(f"agent RSS after start:                    {rss_start:6.1f} MB   (target <= 40)")
    print(f"agent RSS isolated, 50+50 exceptions:     {rss_isolated:6.1f} MB")
    print(f"agent RSS after {2 * args.runs} restarts (new process): {rss_after_restarts:6.1f} MB")
    print(f"idle CPU over {args.idle:.0f} s while isolated:       {cpu:6.3f} %   (target <= 0.2)")
    print(f"restart -> enforced, table adopted:       {1000 * med(adopt):6.0f} ms  median of {args.runs} (target <= 300)")
    print(f"restart -> enforced, table gone (reboot): {1000 * med(fresh):6.0f} ms  median of {args.runs}")
    print(f"baseline: interpreter + imports only:     {1000 * med(base):6.0f} ms  median of {args.runs}")
    print(f"ratio restart/baseline (adopt, reboot):   {med(adopt) / med(base):.2f}, {med(fresh) / med(base):.2f}")
    print(json.dumps({"rss_start_mb": rss_start, "rss_isolated_mb": rss_isolated, "idle_cpu_pct": cpu,
                      "restart_adopt_ms": 1000 * med(adopt), "restart_fresh_ms": 1000 * med(fresh),
                      "import_baseline_ms": 1000 * med(base)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
