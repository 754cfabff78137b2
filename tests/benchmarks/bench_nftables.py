"""nftables backend benchmark (root; works only in namespaces it creates):

    python -m tests.benchmarks.bench_nftables [--runs 7] [--iperf-runs 3] [--seconds 3]

Prints medians and ratios from one run (issue 13's targets; nothing asserted):
1. apply() time for 1, 50, 1000, 10000 exceptions per direction: a first isolation (a
   fresh table), an update between two plans of that size, and the share of it spent
   building and encoding the netlink batch in Python (the rest is the kernel). Targets:
   <= 20 ms at 50+50, <= 100 ms at 10000+10000.
2. iperf3 throughput of an allowed flow, interleaved in the same run: no rules at all, a
   conntrack-only ruleset (the floor any stateful firewall pays), Cordon at 10 and at
   10000 exceptions per direction. Target: Cordon at 10000 >= 0.97 x conntrack-only.
3. New TCP connections per second to an allowed port (connect + RST close from one
   client process), the same variants. Target: Cordon at 10000 >= 0.9 x conntrack-only.
The 1-minute load average is printed at the start and the end (the machine is shared).
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
IPERF_PORT, CONN_PORT = 5201, 5202
# The floor: what any stateful firewall costs (conntrack on, one rule for established
# traffic, one for the allowed new flow), loaded with nft -f in the isolated namespace.
CONNTRACK_ONLY = f"""table inet bench_ctonly {{
    chain input {{ type filter hook input priority 0; policy drop;
        ct state established,related accept; iif "lo" accept; }}
    chain output {{ type filter hook output priority 0; policy drop;
        ct state established,related accept; oif "lo" accept;
        ip daddr {VENDOR} tcp dport {IPERF_PORT}-{CONN_PORT} ct state new accept; }}
    chain forward {{ type filter hook forward priority 0; policy drop; }}
}}
"""
ACCEPTOR = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {CONN_PORT})); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
"""
CONNECTOR = f"""
import socket, struct, sys, time
end, n = time.monotonic() + float(sys.argv[1]), 0
linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT, so no port runs out
while time.monotonic() < end:
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    c.connect(("{VENDOR}", {CONN_PORT})); c.close(); n += 1
print(n / float(sys.argv[1]))
"""


def plan_with(n: int, salt: int = 0) -> Plan:
    """Vendor + n outbound and n inbound exceptions, all distinct /32s and ports."""
    flows = [Flow("out", "tcp", f"{VENDOR}/32", (PortRange(IPERF_PORT, CONN_PORT),), "vendor")]
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
        self.acceptor = subprocess.Popen(["ip", "netns", "exec", self.vendor, sys.executable, "-c", ACCEPTOR],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ss = sh("ip", "netns", "exec", self.vendor, "ss", "-ltnH").stdout
            if f":{IPERF_PORT} " in ss and f":{CONN_PORT} " in ss:
                return
            time.sleep(0.05)
        raise RuntimeError("iperf3 / acceptor did not start listening")

    def __exit__(self, *exc):
        for p in (self.server, self.acceptor):
            p.kill()
            p.wait()
        for ns in (self.host, self.vendor):
            sh("ip", "netns", "del", ns, check=False)

    def conn_rate(self, seconds: float) -> float:
        r = sh("ip", "netns", "exec", self.host, sys.executable, "-c", CONNECTOR, str(seconds))
        return float(r.stdout)

    def conntrack_only(self, on: bool) -> None:
        if on:
            sh("ip", "netns", "exec", self.host, "nft", "-f", "-", input=CONNTRACK_ONLY)
        else:
            sh("ip", "netns", "exec", self.host, "nft", "delete", "table", "inet", "bench_ctonly", check=False)

    def iperf(self, seconds: float) -> float:
        r = sh("ip", "netns", "exec", self.host, "iperf3", "-c", VENDOR, "-t", str(seconds), "-J")
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]


def median_ms(samples) -> float:
    return statistics.median(samples) * 1000


def bench_apply(pair: Pair, runs: int) -> None:
    print(f"apply time, median of {runs} runs (ms); 'encode' = building + encoding the netlink batch in Python:")
    print(f"  {'exceptions/dir':>14} {'isolate':>9} {'update':>9} {'encode':>9} {'kernel+io':>10}")
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
            NftablesBackend(netns=pair.host)._create_batch(build(plans[0]), TableState(False), WANTED_FLAGS)
            encode.append(time.perf_counter() - t0)
        target = {50: 20, 10000: 100}.get(n)
        verdict = f"   target <= {target} ms: {'met' if median_ms(fresh) <= target else 'NOT met'}" if target else ""
        print(f"  {n:>14} {median_ms(fresh):>9.1f} {median_ms(update):>9.1f} "
              f"{median_ms(encode):>9.1f} {median_ms(fresh) - median_ms(encode):>10.1f}{verdict}")


VARIANTS = ("none", "conntrack-only", "cordon-10", "cordon-10000")


def _each_variant(pair: Pair, runs: int, measure) -> dict[str, list[float]]:
    """`measure()` under every variant, interleaved `runs` times so drift hits all alike."""
    results = {v: [] for v in VARIANTS}
    plans = {"cordon-10": plan_with(10), "cordon-10000": plan_with(10000)}
    backend = NftablesBackend(netns=pair.host)
    try:
        for _ in range(runs):
            for name in VARIANTS:
                backend.clear()
                pair.conntrack_only(name == "conntrack-only")
                if name in plans:
                    backend.apply(plans[name])
                results[name].append(measure())
    finally:
        pair.conntrack_only(False)
        backend.clear()
        backend.close()
    return results


def _print_ratios(title: str, unit: str, scale: float, results: dict, target: float) -> None:
    floor, bare = statistics.median(results["conntrack-only"]), statistics.median(results["none"])
    print(title)
    for name, samples in results.items():
        med = statistics.median(samples)
        print(f"  {name:<16} {med / scale:10.2f} {unit}   vs conntrack-only {med / floor:.3f}   "
              f"vs no rules {med / bare:.3f}")
    ratio = statistics.median(results["cordon-10000"]) / floor
    print(f"  target: cordon-10000 >= {target} x conntrack-only: {ratio:.3f} {'met' if ratio >= target else 'NOT met'}")


def bench_throughput(pair: Pair, runs: int, seconds: float) -> None:
    results = _each_variant(pair, runs, lambda: pair.iperf(seconds))
    _print_ratios(f"iperf3 tcp {seconds:g}s x {runs}, allowed flow host -> vendor:{IPERF_PORT} (median):",
                  "Gbit/s", 1e9, results, 0.97)


def bench_conn_rate(pair: Pair, runs: int, seconds: float) -> None:
    results = _each_variant(pair, runs, lambda: pair.conn_rate(seconds))
    _print_ratios(f"new TCP connections/s {seconds:g}s x {runs}, host -> vendor:{CONN_PORT}, one client (median):",
                  "conn/s", 1, results, 0.9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--iperf-runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with Pair() as pair:
        bench_apply(pair, args.runs)
        bench_throughput(pair, args.iperf_runs, args.seconds)
        bench_conn_rate(pair, args.iperf_runs, args.seconds)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
