"""Allowed-flow throughput and apply time of the WinDivert backend (50+50 policy), against
no isolation and the nftables backend, in the same run, in a fresh netns lab (root).

    sudo python -m tests.benchmarks.bench_windivert [--runs 3] [--seconds 3]

Two allowed flows are measured: to an exception (rmm, tcp/5201) and to the vendor
(tcp/5201). Medians over --runs; ratios are against "none" of the same flow.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from platforms.plan import Flow, Plan, PortRange
from tests.harness import Lab
from tests.harness.lab import REPO_ROOT

PORT = 5201


def plan_50_50() -> Plan:
    p = lambda *ps: tuple(PortRange(x, x) for x in ps)  # noqa: E731
    flows = [Flow("out", "tcp", "198.51.100.10/32", p(443, PORT), "vendor", "vendor"),
             Flow("out", "udp", "198.51.100.53/32", p(53), "dns", "dns"),
             Flow("out", "tcp", "203.0.113.20/32", p(PORT, 22), name="rmm"),
             Flow("in", "tcp", "203.0.113.5/32", p(3389), name="jump")]
    for i in range(49):
        flows.append(Flow("out", ("tcp", "udp")[i % 2], f"192.0.2.{130 + i}/32", p(443, 8000 + i), name=f"o{i}"))
        flows.append(Flow("in", "tcp", f"198.51.100.{100 + i}/32", p(22, 3389), name=f"i{i}"))
    return Plan("standard", tuple(flows), True, 1)


class WinDivertChild:
    def __init__(self, lab) -> None:
        self.proc = lab.spawn("endpoint", sys.executable, "-m", "tests.integration.windivert_child",
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                              env=dict(os.environ, PYTHONPATH=REPO_ROOT))

    def cmd(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if not answer.get("ok"):
            raise RuntimeError(answer)
        return answer


def iperf(lab, dst: str, seconds: float) -> float:
    out = lab.run("endpoint", "iperf3", "-c", lab.addr(dst, 4), "-p", str(PORT), "-t", str(seconds), "-J",
                  timeout=seconds + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3)
    args = ap.parse_args()
    from platforms.nftables import NftablesBackend
    plan = plan_50_50()
    gbps: dict[tuple[str, str], list[float]] = {}
    apply_s: dict[str, list[float]] = {"nftables": [], "windivert": []}
    with Lab() as lab:
        for host in ("rmm", "vendor"):
            lab.spawn(host, "iperf3", "-s", "-p", str(PORT), stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        nft = NftablesBackend(netns=lab.ns("endpoint"))
        wd = WinDivertChild(lab)
        for run in range(args.runs):
            for cond in ("none", "nftables", "windivert"):
                if cond == "nftables":
                    t0 = time.perf_counter()
                    nft.apply(plan)
                    apply_s["nftables"].append(time.perf_counter() - t0)
                elif cond == "windivert":
                    apply_s["windivert"].append(wd.cmd(cmd="apply", plan=plan.to_json())["seconds"])
                try:
                    for dst in ("rmm", "vendor"):
                        gbps.setdefault((cond, dst), []).append(iperf(lab, dst, args.seconds))
                finally:
                    if cond == "nftables":
                        nft.clear()
                    elif cond == "windivert":
                        shape = wd.cmd(cmd="read_back")["details"]["shape"]
                        wd.cmd(cmd="clear")
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        nft.close()
    print(f"policy: 50 out + 50 in exceptions (+vendor, DNS, DHCP); windivert shape: {shape}; "
          f"{args.runs} runs x {args.seconds:g}s, medians")
    print(f"{'flow':<16}{'condition':<12}{'Gbit/s':>10}{'vs none':>10}{'vs nftables':>13}")
    for dst, label in (("rmm", "exception rmm"), ("vendor", "vendor")):
        base = statistics.median(gbps[("none", dst)])
        nftm = statistics.median(gbps[("nftables", dst)])
        for cond in ("none", "nftables", "windivert"):
            m = statistics.median(gbps[(cond, dst)])
            print(f"{label:<16}{cond:<12}{m:>10.3f}{m / base:>10.3f}{m / nftm:>13.3f}")
    for name, xs in apply_s.items():
        print(f"apply time {name:<10} median {statistics.median(xs) * 1000:.1f} ms  (runs: "
              + ", ".join(f"{x * 1000:.1f}" for x in xs) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
