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
from .waits import Deadline, scaled, wait_until

NATS_PORT = 4222


class Broker:
    """nats-server -js on the vendor host's IPv4 address; its store in the lab's run dir.
    `extra` are more nats-server arguments (a cluster node's routes, see Cluster)."""

    def __init__(self, lab, host: str = "vendor", port: int = NATS_PORT, extra: tuple[str, ...] = ()) -> None:
        self.lab, self.host, self.port, self.extra = lab, host, port, tuple(extra)
        self.address = lab.addr(host, 4)
        self.store = os.path.join(lab.rundir, f"nats-{host}")
        self.log_path = os.path.join(lab.rundir, f"nats-{host}.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.address}:{self.port}"

    @property
    def urls(self) -> list[str]:
        return [self.url]

    @property
    def addresses(self) -> list[str]:
        return [self.address]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15) -> "Broker":
        log = open(self.log_path, "a")
        self.proc = self.lab.spawn(self.host, "nats-server", "-js", "-sd", self.store, "-a", self.address,
                                   "-p", str(self.port), "-n", f"cordon-lab-{self.lab.runid}-{self.host}",
                                   *self.extra, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        try:
            wait_until(self._answers, timeout, "nats-server answering", error=RuntimeError,
                       abort=lambda: self.proc.poll() is not None and f"it exited with {self.proc.returncode}")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.log_tail()}") from None
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
            self.proc.wait(scaled(10))

    def ready(self, timeout: float = 60) -> None:
        """Nothing more to wait for on a single server (a Cluster waits for JetStream)."""


class Cluster:
    """Three nats-server nodes with JetStream, one per lab host, routed into one cluster;
    CORDON_CMD and CORDON_STATUS are created with `replicas` copies before any agent
    connects (the operator's job in a deployment: a client would create them with one).
    Looks like a Broker to Console and Wire: `url` (comma-separated, for --servers),
    `urls`, `addresses`, `port`. Nodes are killed and restarted by pid (`kill(i)`,
    `restart(i)`); each keeps its store in the lab's run dir."""

    CLUSTER_PORT = 6222

    def __init__(self, lab, hosts: tuple[str, ...] = ("nats1", "nats2", "nats3"), port: int = NATS_PORT,
                 replicas: int = 3) -> None:
        self.lab, self.port, self.replicas = lab, port, replicas
        routes = ",".join(f"nats://{lab.addr(h, 4)}:{self.CLUSTER_PORT}" for h in hosts)
        self.nodes = [Broker(lab, h, port, extra=(
            "--cluster_name", f"cordon-lab-{lab.runid}", "--cluster", f"nats://{lab.addr(h, 4)}:{self.CLUSTER_PORT}",
            "--routes", routes)) for h in hosts]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def start(self, timeout: float = 30) -> "Cluster":
        for n in self.nodes:
            if not n.running:
                n.start(timeout)
        self.ready(timeout)
        return self

    def ready(self, timeout: float = 60) -> None:
        """Until the JetStream meta group has a leader and both the stream and the bucket
        exist with `replicas` copies (created here if missing)."""
        from nats.js.api import KeyValueConfig, StreamConfig
        from agent.channel import wire as fmt

        async def prepare(js):
            try:
                await js.stream_info(fmt.STREAM)
            except Exception:
                await js.add_stream(StreamConfig(name=fmt.STREAM, subjects=[fmt.STREAM_SUBJECTS],
                                                 max_age=fmt.STREAM_MAX_AGE_S, num_replicas=self.replicas))
            try:
                await js.key_value(fmt.STATUS_BUCKET)
            except Exception:
                await js.create_key_value(KeyValueConfig(bucket=fmt.STATUS_BUCKET, history=1, replicas=self.replicas))
            return (await js.stream_info(fmt.STREAM)).config.num_replicas
        with Wire(self.lab, self) as w:
            try:
                wait_until(lambda: w.call(prepare(w.js), timeout=10) == self.replicas, timeout,
                           "JetStream cluster ready", step=0.2, error=RuntimeError, retry_on=(Exception,))
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{self.nodes[0].log_tail()}") from None

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def restart(self, i: int, timeout: float = 30) -> None:
        self.nodes[i].start(timeout)

    def close(self) -> None:
        for n in self.nodes:
            n.kill()

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

    def argv(self, *args: str, timeout: float = 10) -> list[str]:
        return netns.exec_argv(self.lab.ns(self.host), sys.executable, "-m", "console.cli", *args,
                               "--servers", self.broker.url, "--key", self.key, "--timeout", str(timeout))

    def run(self, *args: str, timeout: float = 10, wait: float = 60) -> subprocess.CompletedProcess:
        """`timeout`: the console's own --timeout; `wait`: the guard against a hang of the
        whole process, seconds on an idle machine (x load)."""
        return subprocess.run(self.argv(*args, timeout=timeout), env=self._env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=scaled(wait))

    def popen(self, *args: str, timeout: float = 10) -> subprocess.Popen:
        """The same, not waited for (stdout/stderr pipes; `communicate()` it). Its own
        session, so the lab's teardown can kill it by pid."""
        p = subprocess.Popen(self.argv(*args, timeout=timeout), env=self._env, cwd=REPO_ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.lab._extra.append(p)
        return p

    def fleet(self) -> dict[str, dict]:
        p = self.run("fleet", "--json")
        if p.returncode != 0:
            raise RuntimeError(f"fleet failed: {p.stderr}")
        return {row["agent"]: row for row in json.loads(p.stdout)}

    def agent_config(self, agent_id: str, sensor_type: str = "endpoint_sensor", **kw) -> dict:
        """An agent config whose vendor endpoints cover the broker, with [console]."""
        cfg = default_config(self.lab, "/unused", "/unused", sensor_type=sensor_type, **kw)
        del cfg["state_dir"], cfg["control_socket"]
        for address in self.broker.addresses:
            cfg["vendor"]["endpoints"].append({"address": address, "protocol": "tcp", "ports": str(self.broker.port)})
        cfg["console"] = {"servers": self.broker.urls, "agent_id": agent_id, "public_key": self.pub}
        return cfg

    def wait_subscribed(self, agent, count: int = 1, timeout: float = 30) -> None:
        """Until the agent's audit log says its consumers are in place (`count` times)."""
        try:
            wait_until(lambda: len(agent.audit_events("console_subscribed")) >= count, timeout,
                       f"agent subscribed x{count}", abort=agent.exit_reason, error=RuntimeError)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{agent.stderr_tail()}") from None


class Wire:
    """nats-py in the test process, its sockets made in a lab namespace (router: it sees
    the vendor host whatever the endpoint's isolation). Collects every result event."""

    def __init__(self, lab, broker: Broker, host: str = "router") -> None:
        self.lab, self.broker, self.ns = lab, broker, lab.ns(host)
        self.loop = asyncio.new_event_loop()
        self.events: list[dict] = []
        self.commands: dict[str, float] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.nc = self.js = None

    def _run(self) -> None:
        with netns.entered(self.ns):
            self.loop.run_forever()

    def call(self, coro, timeout: float = 20):
        """Run `coro` on the wire's loop; `timeout` x load guards a hang."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(scaled(timeout))

    def __enter__(self) -> "Wire":
        import nats
        self._thread.start()

        async def connect():
            self.nc = await nats.connect(servers=self.broker.urls, connect_timeout=3, max_reconnect_attempts=-1,
                                         reconnect_time_wait=0.5)
            self.js = self.nc.jetstream()
            await self.nc.subscribe("cordon.v1.evt.*", cb=self._on_event)
            await self.nc.subscribe("cordon.v1.cmd.>", cb=self._on_command)
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
        ev = json.loads(msg.data)
        ev["_at"] = time.monotonic()       # when it reached this process (not part of the wire format)
        with self._cond:
            self.events.append(ev)
            self._cond.notify_all()

    async def _on_command(self, msg) -> None:
        """Every command published (a core subscriber sees what JetStream stores): its id
        and when it reached this process, the start of a publish -> ack measurement."""
        try:
            cid = json.loads(msg.data)["cmd"]["id"]
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            self.commands[cid] = time.monotonic()
            self._cond.notify_all()

    def command_seen(self, timeout: float = 30) -> tuple[str, float]:
        """Wait for the next command published after this call; (its id, when it was seen)."""
        deadline = Deadline(timeout)
        with self._cond:
            known = set(self.commands)
            while True:
                new = [(t, c) for c, t in self.commands.items() if c not in known]
                if new:
                    t, c = min(new)
                    return c, t
                if deadline.expired:
                    raise AssertionError(f"no command published within {deadline}")
                self._cond.wait(deadline.left())

    def events_for(self, cid: str, agents, timeout: float) -> dict[str, dict]:
        """agent -> its first result event for command `cid`, waiting until every agent
        in `agents` has one or `timeout` passes (then the missing ones are absent)."""
        deadline = Deadline(timeout)
        want = set(agents)
        with self._cond:
            while True:
                got = {}
                for ev in self.events:
                    if ev.get("id") == cid and ev.get("agent") in want and ev["agent"] not in got:
                        got[ev["agent"]] = ev
                if len(got) == len(want) or deadline.expired:
                    return got
                self._cond.wait(deadline.left())

    def reported(self, agent_id: str) -> dict | None:
        """The agent's entry in the fleet's status bucket, read from the broker now (None: none)."""
        async def get():
            from nats.js.errors import KeyNotFoundError
            from agent.channel import wire
            try:
                return json.loads((await (await self.js.key_value(wire.STATUS_BUCKET)).get(agent_id)).value)
            except KeyNotFoundError:
                return None
        return self.call(get())

    def publish(self, subject: str, body: bytes) -> int:
        """Into the stream; returns the stream sequence the broker stored it under."""
        async def pub():
            from agent.channel.runner import ensure_stream
            await ensure_stream(self.js)
            return (await self.js.publish(subject, body, stream="CORDON_CMD")).seq
        return self.call(pub())

    def event(self, timeout: float = 20, **match) -> dict:
        """The first result event whose fields equal `match` (e.g. seq=7, agent="ep1")."""
        deadline = Deadline(timeout)
        with self._cond:
            while True:
                for ev in self.events:
                    if all(ev.get(k) == v for k, v in match.items()):
                        return ev
                if deadline.expired:
                    raise AssertionError(f"no result event {match} within {deadline}; saw {self.events[-5:]}")
                self._cond.wait(deadline.left())

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
