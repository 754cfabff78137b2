"""nftables backend benchmark (root; works only in namespaces it creates):

    python -m tests.benchmarks.bench_nftables [--runs 7] [--iperf-runs 3] [--seconds 3]

1. apply() time, median over runs, for 1, 50, 1000, 10000 exceptions per direction
   (a fresh table each run: "isolate"), and for an update between two plans of that
   size (an already-owned table: "update").
2. iperf3 throughput of an allowed flow between two namespaces with no isolation and
   with isolation at 10 and 10000 exceptions per direction, measured in the same run,
   printed as ratios against no isolation. Targets: apply <= 20 ms at 50+50, <= 150 ms at
   10000+10000; ratio >= 0.95.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

from platforms.plan import Flow, Plan, PortRange
from platforms.nftables.render import build
from platforms.nftables.backend import WANTED_FLAGS, NftablesBackend
from platforms.nftables.readback import TableState

VENDOR = "198.51.100.10"
SIZES = (1, 50, 1000, 10000)


def plan_with(n: int, salt: int = 0) -> Plan:
    """Vendor + n outbound and n inbound exceptions, all distinct /32s and ports."""
    flows = [Flow("out", "tcp", f"{VENDOR}/32", (PortRange(5201, 5201),), "vendor")]
    for i in range(n):
        a, b = divmod(i + salt, 250)
        port = 1024 + (i % 50000)
        flows.append(Flow("out", "tcp", f"203.0.{a % 256}.{b + 1}/32", (PortRange(port, port),)))
        flows.append(Flow("in", "tcp", f"192.0.{a % 256}.{b + 1}/32", (PortRange(port, port),)))
    return Plan("standard", tuple(flows), dhcp=True)


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


class Pair:
    """Two namespaces on one veth: `host` (isolated) and `vendor` (iperf3 server)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.host, self.vendor = f"cdn-bench-{tag}-h", f"cdn-bench-{tag}-v"

    def __enter__(self):
        sh("ip", "netns", "add", self.host)
        sh("ip", "netns", "add", self.vendor)
        sh("ip", "-n", self.host, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", self.vendor)
        for ns, addr in ((self.host, "198.51.100.9/29"), (self.vendor, f"{VENDOR}/29")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.server = subprocess.Popen(["ip", "netns", "exec", self.vendor, "iperf3", "-s"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.server.kill()
        self.server.wait()
        for ns in (self.host, self.vendor):
            sh("ip", "netns", "del", ns, check=False)

    def iperf(self, seconds: float) -> float:
        r = sh("ip", "netns", "exec", self.host, "iperf3", "-c", VENDOR, "-t", str(seconds), "-J")
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]


def median_ms(samples) -> float:
    return statistics.median(samples) * 1000


def bench_apply(pair: Pair, runs: int) -> None:
    print(f"apply time, median of {runs} runs (ms):")
    print(f"  {'exceptions/dir':>14} {'isolate':>9} {'update':>9} {'build+encode only':>18}")
    for n in SIZES:
        plans = (plan_with(n), plan_with(n, salt=7))
        fresh, update = [], []
        backend = NftablesBackend(netns=pair.host)
        try:
            backend.portid  # open the socket outside the timing (done once per agent life)
            for r in range(runs):
                backend.clear()
                t0 = time.perf_counter()
                backend.apply(plans[0])
                fresh.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                backend.apply(plans[1])
                update.append(time.perf_counter() - t0)
            assert backend.read_back().enforces(plans[1]), "read-back does not match"
        finally:
            backend.clear()
            backend.close()
        encode = []
        for _ in range(runs):
            t0 = time.perf_counter()
            NftablesBackend()._create_batch(build(plans[0]), TableState(False), WANTED_FLAGS)
            encode.append(time.perf_counter() - t0)
        print(f"  {n:>14} {median_ms(fresh):>9.1f} {median_ms(update):>9.1f} "
              f"{median_ms(encode):>18.1f}")


def bench_throughput(pair: Pair, runs: int, seconds: float) -> None:
    results = {"none": [], "10": [], "10000": []}
    plans = {"10": plan_with(10), "10000": plan_with(10000)}
    backend = NftablesBackend(netns=pair.host)
    try:
        for _ in range(runs):  # interleaved, so drift hits every variant alike
            for name in results:
                if name == "none":
                    backend.clear()
                else:
                    backend.apply(plans[name])
                results[name].append(pair.iperf(seconds))
    finally:
        backend.clear()
        backend.close()
    base = statistics.median(results["none"])
    print(f"iperf3 tcp {seconds:g}s x {runs}, allowed flow host -> vendor:5201 (median Gbit/s):")
    for name, samples in results.items():
        med = statistics.median(samples)
        label = "no isolation" if name == "none" else f"isolated, {name} exceptions/dir"
        print(f"  {label:<32} {med / 1e9:8.2f}   ratio {med / base:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--iperf-runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    with Pair() as pair:
        bench_apply(pair, args.runs)
        bench_throughput(pair, args.iperf_runs, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
