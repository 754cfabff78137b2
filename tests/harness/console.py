"""The console side of the lab (DESIGN §10): a real `nats-server` with JetStream on the
vendor host, the real `cordon-console` CLI run there, and a nats-py client for tests that
must put raw (forged, replayed, malformed) bodies on the wire.

    broker = Broker(lab).start()                   # store in the lab's temp dir, killed by pid
    console = Console(lab, broker).keygen()
    agent = Agent(lab, config=console.agent_config("ep1")).start(); console.wait_subscribed(agent)
    console.run("isolate", "ep1")                   # CompletedProcess of cordon-console
    with Wire(lab, broker) as w: seq = w.publish("cordon.v1.cmd.ep1", body); w.event(seq=seq)
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from . import netns
from .driver import default_config
from .lab import REPO_ROOT

NATS_PORT = 4222


class Broker:
    """nats-server -js on the vendor host's IPv4 address; its store in the lab's run dir."""

    def __init__(self, lab, host: str = "vendor", port: int = NATS_PORT) -> None:
        self.lab, self.host, self.port = lab, host, port
        self.address = lab.addr(host, 4)
        self.store = os.path.join(lab.rundir, f"nats-{host}")
        self.log_path = os.path.join(lab.rundir, f"nats-{host}.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.address}:{self.port}"

    def start(self, timeout: float = 15) -> "Broker":
        log = open(self.log_path, "a")
        self.proc = self.lab.spawn(self.host, "nats-server", "-js", "-sd", self.store, "-a", self.address,
                                   "-p", str(self.port), "-n", f"cordon-lab-{self.lab.runid}",
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server not answering after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        """An INFO line on a TCP connection from the router (outside any isolation)."""
        s = netns.socket_in(self.lab.ns("router"), socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect((self.address, self.port))
            return s.recv(4096).startswith(b"INFO ")
        except OSError:
            return False
        finally:
            s.close()

    def kill(self) -> None:
        """Stop the broker at once (SIGKILL by pid); its store stays for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Console:
    """`cordon-console` on the vendor host, with a key pair in the lab's run dir."""

    def __init__(self, lab, broker: Broker, host: str = "vendor") -> None:
        self.lab, self.broker, self.host = lab, broker, host
        self.key = os.path.join(lab.rundir, "console.key")
        self.pub = os.path.join(lab.rundir, "console.pub")
        self._env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def keygen(self) -> "Console":
        p = self.run("keygen", "--pub", self.pub)
        if p.returncode != 0:
            raise RuntimeError(f"keygen failed: {p.stderr}")
        return self

    def run(self, *args: str, timeout: float = 10, wait: float = 60) -> subprocess.CompletedProcess:
        argv = netns.exec_argv(self.lab.ns(self.host), sys.executable, "-m", "console.cli", *args,
                               "--servers", self.broker.url, "--key", self.key, "--timeout", str(timeout))
        return subprocess.run(argv, env=self._env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=wait)

    def fleet(self) -> dict[str, dict]:
        p = self.run("fleet", "--json")
        if p.returncode != 0:
            raise RuntimeError(f"fleet failed: {p.stderr}")
        return {row["agent"]: row for row in json.loads(p.stdout)}

    def agent_config(self, agent_id: str, sensor_type: str = "endpoint_sensor", **kw) -> dict:
        """An agent config whose vendor endpoints cover the broker, with [console]."""
        cfg = default_config(self.lab, "/unused", "/unused", sensor_type=sensor_type, **kw)
        del cfg["state_dir"], cfg["control_socket"]
        cfg["vendor"]["endpoints"].append({"address": self.broker.address, "protocol": "tcp",
                                           "ports": str(self.broker.port)})
        cfg["console"] = {"servers": [self.broker.url], "agent_id": agent_id, "public_key": self.pub}
        return cfg

    def wait_subscribed(self, agent, count: int = 1, timeout: float = 30) -> None:
        """Until the agent's audit log says its consumers are in place (`count` times)."""
        deadline = time.monotonic() + timeout
        while len(agent.audit_events("console_subscribed")) < count:
            if not agent.alive:
                raise RuntimeError(f"agent exited:\n{agent.stderr_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not subscribed after {timeout}s:\n{agent.stderr_tail()}")
            time.sleep(0.05)


class Wire:
    """nats-py in the test process, its sockets made in a lab namespace (router: it sees
    the vendor host whatever the endpoint's isolation). Collects every result event."""

    def __init__(self, lab, broker: Broker, host: str = "router") -> None:
        self.lab, self.broker, self.ns = lab, broker, lab.ns(host)
        self.loop = asyncio.new_event_loop()
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.nc = self.js = None

    def _run(self) -> None:
        with netns.entered(self.ns):
            self.loop.run_forever()

    def call(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> "Wire":
        import nats
        self._thread.start()

        async def connect():
            self.nc = await nats.connect(servers=[self.broker.url], connect_timeout=3, max_reconnect_attempts=-1,
                                         reconnect_time_wait=0.5)
            self.js = self.nc.jetstream()
            await self.nc.subscribe("cordon.v1.evt.*", cb=self._on_event)
            await self.nc.flush()
        self.call(connect())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call(self.nc.close(), timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def _on_event(self, msg) -> None:
        with self._cond:
            self.events.append(json.loads(msg.data))
            self._cond.notify_all()

    def publish(self, subject: str, body: bytes) -> int:
        """Into the stream; returns the stream sequence the broker stored it under."""
        async def pub():
            from agent.channel.runner import ensure_stream
            await ensure_stream(self.js)
            return (await self.js.publish(subject, body, stream="CORDON_CMD")).seq
        return self.call(pub())

    def event(self, timeout: float = 20, **match) -> dict:
        """The first result event whose fields equal `match` (e.g. seq=7, agent="ep1")."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if all(ev.get(k) == v for k, v in match.items()):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no result event {match} within {timeout}s; saw {self.events[-5:]}")
                self._cond.wait(left)

    def consumer(self, durable: str) -> dict:
        """The broker's view of an agent's durable consumer: what is still unacked."""
        async def info():
            ci = await self.js.consumer_info("CORDON_CMD", durable)
            return {"num_pending": ci.num_pending, "num_ack_pending": ci.num_ack_pending,
                    "num_redelivered": ci.num_redelivered, "delivered": ci.delivered.stream_seq,
                    "ack_floor": ci.ack_floor.stream_seq}
        return self.call(info())

    def status(self, agent_id: str) -> dict:
        """The agent's entry in the CORDON_STATUS bucket."""
        async def get():
            kv = await self.js.key_value("CORDON_STATUS")
            return json.loads((await kv.get(agent_id)).value)
        return self.call(get())
