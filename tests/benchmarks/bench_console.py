"""Console channel figures (DESIGN §10), on the real agent in a lab namespace against a
real nats-server on the vendor host.

Prints:
- publish -> enforced -> acked latency for one endpoint: a signed command published into
  CORDON_CMD until the agent's result event arrives (the agent sends it after it applied
  the change, read it back from the firewall and acked the message). Commands alternate
  isolate standard / isolate strict, so each one is a real firewall change. Median, p90,
  p99, max over --commands (>= 50), next to the same broker round trip without an agent
  (publish, pull through a durable consumer, ack, reply event) measured in the same run.
- agent RSS with the channel connected, next to an agent without [console] (target 45 MB).

    sudo .venv/bin/python -m tests.benchmarks.bench_console [--commands 100]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import timedelta

import psutil

from agent.channel import wire as fmt
from tests.harness import Lab
from tests.harness.console import Broker, Console, Wire
from tests.harness.driver import Agent


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(ms) -> str:
    return (f"median {statistics.median(ms):.1f} ms, p90 {pct(ms, 90):.1f}, p99 {pct(ms, 99):.1f}, "
            f"max {max(ms):.1f} (n={len(ms)})")


def agent_latency(w: Wire, key, n: int) -> list[float]:
    out = []
    for i in range(n):
        cmd = fmt.new_command("ep1", "isolate", {"strict": i % 2 == 1}, timedelta(minutes=5))
        t0 = time.perf_counter()
        w.publish("cordon.v1.cmd.ep1", fmt.sign(cmd, key))
        ev = w.event(id=cmd["id"], timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
        assert ev["outcome"] == "applied" and ev["status"]["enforcing"], ev
    return out


def broker_round_trip(w: Wire, n: int) -> list[float]:
    """The same hops with no agent: publish, pull + ack_sync, publish a reply, receive it."""
    from nats.js.api import AckPolicy, ConsumerConfig

    async def run():
        subject = "cordon.v1.cmd.bench-echo"
        psub = await w.js.pull_subscribe(subject, durable="bench-echo", stream=fmt.STREAM,
                                         config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        got = asyncio.Queue()

        async def on_reply(m):
            await got.put(m)
        await w.nc.subscribe("bench.echo.reply", cb=on_reply)
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            await w.js.publish(subject, b'{"n":%d}' % i, stream=fmt.STREAM)
            (msg,) = await psub.fetch(1, timeout=10)
            await msg.ack_sync()
            await w.nc.publish("bench.echo.reply", msg.data)
            await got.get()
            out.append((time.perf_counter() - t0) * 1000)
        return out
    return w.call(run(), timeout=300)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=100)
    args = ap.parse_args()
    n = max(50, args.commands)
    with Lab() as lab:
        broker = Broker(lab).start()
        console = Console(lab, broker).keygen()
        plain = Agent(lab, host="outside")   # the same agent without [console], in another namespace
        ep1 = Agent(lab, config=console.agent_config("ep1"))
        try:
            plain.start()
            ep1.start()
            console.wait_subscribed(ep1)
            with Wire(lab, broker) as w:
                key = fmt.load_private_key(console.key)
                agent_latency(w, key, 5)                # warm-up: consumers, caches
                broker_ms = broker_round_trip(w, n)
                agent_ms = agent_latency(w, key, n)
            apply_ms = [e["apply_ms"] for e in ep1.audit_events("isolated")][-n:]
            rss_console = psutil.Process(ep1.pid).memory_info().rss / 2**20
            rss_plain = psutil.Process(plain.pid).memory_info().rss / 2**20
        finally:
            ep1.close()
            plain.close()
            broker.kill()
    print(f"publish -> enforced -> acked, one endpoint: {summary(agent_ms)}")
    print(f"  of which firewall apply + read-back (agent's apply_ms): median {statistics.median(apply_ms):.1f} ms")
    print(f"baseline broker round trip (no agent):      {summary(broker_ms)}")
    print(f"  ratio (median): {statistics.median(agent_ms) / statistics.median(broker_ms):.1f}x")
    print(f"agent RSS, channel connected: {rss_console:.1f} MB (target <= 45 MB); without [console]: "
          f"{rss_plain:.1f} MB; channel cost {rss_console - rss_plain:+.1f} MB")
    print(json.dumps({"latency_ms": {"median": statistics.median(agent_ms), "p99": pct(agent_ms, 99)},
                      "baseline_ms": {"median": statistics.median(broker_ms), "p99": pct(broker_ms, 99)},
                      "rss_mb": {"console": round(rss_console, 1), "plain": round(rss_plain, 1)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
