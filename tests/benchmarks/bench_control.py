"""Root's latency on the control socket while unprivileged users abuse it (DESIGN §7).

Prints the median and max of root's isolate/release round trips with no other clients
(the baseline, same run) and with N idle plus N flooding clients as uid 65534 (the
flooders dribble a byte every 0.2 s and reconnect when cut), and the ratio to the
baseline. The firewall is the in-memory backend: this measures the channel, not nft.

    sudo .venv/bin/python -m tests.benchmarks.bench_control [--clients 20 64] [--rounds 20]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time

from agent import client
from agent.config import parse_config
from agent.engine import Engine
from agent.log import null_logger
from agent.server import ControlServer
from agent.store import Store
from tests.unit.memory_backend import MemoryBackend
from tests.unit.test_control_abuse import _flood, _hold_idle
from tests.users import NOBODY


def _as_nobody(target, path, n):
    ready_r, ready_w = os.pipe()
    rel_r, rel_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            code = target(path, n, ready_w, rel_r)
        finally:
            os._exit(code)
    os.read(ready_r, 1)
    return pid, rel_w


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
    run_dir = tempfile.mkdtemp(prefix="cordon-bench-")
    os.chmod(run_dir, 0o755)
    try:
        config = parse_config({"state_dir": f"{run_dir}/state", "control_socket": f"{run_dir}/c.sock",
                               "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}})
        engine = Engine(config, Store(config.state_dir), MemoryBackend(), null_logger())
        engine.start()
        server = ControlServer(config.control_socket, engine, null_logger())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = _rounds(config.control_socket, args.rounds)
        b = statistics.median(base)
        print(f"baseline (no other clients): median {b:.1f} ms, max {max(base):.1f} ms")
        for n in args.clients:
            kids = [_as_nobody(t, config.control_socket, n) for t in (_hold_idle, _flood)]
            try:
                lat = _rounds(config.control_socket, args.rounds)
            finally:
                for pid, w in kids:
                    os.write(w, b"x")
                    os.waitpid(pid, 0)
            m = statistics.median(lat)
            print(f"{n} idle + {n} flooding uid {NOBODY} clients: median {m:.1f} ms, max {max(lat):.1f} ms, "
                  f"median ratio to baseline {m / b:.2f}")
        server.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
