"""Host exception refresh cost (DESIGN §11), root, in namespaces it creates:

    python -m tests.benchmarks.bench_host_refresh [--runs 15] [--names 50]

50 host exceptions (one port each) that resolve to 16 addresses each (800 set elements
per refresh, in the inet and the netdev table). One refresh = compile the plan from the
answers + Backend.refresh (set elements only: every element's expiry moved, so each is
deleted and added again in one batch) + read-back. Printed as medians: CPU ms (this
process) and wall ms, and the same for a full apply (the rule-swapping update) of the
same plan, measured in the same run as the baseline.
"""
from __future__ import annotations

import argparse
import statistics
import time

from agent.compile import compile_plan
from agent.config import Config
from agent.policy import validate_policy
from platforms.nftables.backend import NftablesBackend
from platforms.plan import HostAddresses
from tests.benchmarks.bench_nftables import VENDOR, Pair

ADDRESSES = [f"{net}.{i}" for net in ("203.0.113", "198.51.100", "192.0.2") for i in range(1, 255)]


def setup(names: int):
    config = Config.model_validate({"vendor": {"endpoints": [{"address": VENDOR, "protocol": "tcp", "ports": "5201"}],
                                               "dns_servers": ["198.51.100.53"]}})
    hosts = [f"rmm{i}.example.com" for i in range(names)]
    policy = validate_policy({"version": 1, "enabled": True, "outbound": [
        {"protocol": "tcp", "host": h, "ports": str(2000 + i)} for i, h in enumerate(hosts)]})

    def answers(ttl_from: float) -> dict:
        return {h: HostAddresses(h, tuple(ADDRESSES[(16 * i + k) % len(ADDRESSES)] for k in range(16)),
                                 ttl_from + 300, None, 300) for i, h in enumerate(hosts)}
    return config, policy, answers


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - c0) * 1000, (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--names", type=int, default=50)
    args = ap.parse_args()
    config, policy, answers = setup(args.names)
    with Pair() as pair:
        backend = NftablesBackend(netns=pair.host)
        try:
            backend.apply(compile_plan(config, policy, "standard", answers(time.time()), now=time.time()))
            refresh, full, parts = [], [], {"compile": [], "backend.refresh": [], "read_back": []}
            for _ in range(args.runs):
                box = {}
                parts["compile"].append(timed(lambda: box.update(
                    plan=compile_plan(config, policy, "standard", answers(time.time()), now=time.time()))))
                parts["backend.refresh"].append(timed(lambda: backend.refresh(box["plan"])))
                parts["read_back"].append(timed(lambda: backend.read_back()))
                def one_refresh():
                    plan = compile_plan(config, policy, "standard", answers(time.time()), now=time.time())
                    backend.refresh(plan)
                    assert backend.read_back().enforces(plan)

                def one_apply():
                    plan = compile_plan(config, policy, "standard", answers(time.time()), now=time.time())
                    backend.apply(plan)
                    assert backend.read_back().enforces(plan)
                refresh.append(timed(one_refresh))
                full.append(timed(one_apply))
            elements = sum(len(v) for v in backend._ruleset.expires.values())
        finally:
            backend.clear()
            backend.close()
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    print(f"host refresh, {args.names} names x 16 addresses ({elements} expiring elements), "
          f"median of {args.runs} runs:")
    print(f"  {'':<34} {'CPU ms':>8} {'wall ms':>8}")
    print(f"  {'refresh (set elements only)':<34} {med(refresh, 0):>8.1f} {med(refresh, 1):>8.1f}")
    for name, xs in parts.items():
        print(f"    of which {name:<25} {med(xs, 0):>8.1f} {med(xs, 1):>8.1f}")
    print(f"  {'full apply (rule swap), baseline':<34} {med(full, 0):>8.1f} {med(full, 1):>8.1f}")
    print(f"  ratio refresh/full (wall): {med(refresh, 1) / med(full, 1):.2f}")


if __name__ == "__main__":
    main()
