"""The console channel's connection: an asyncio loop in its own thread, so the local
control socket and the tamper watch never wait on the network.

Connect (retrying forever while the broker is away) -> make sure the stream and the
status bucket exist -> one durable pull consumer per subject (the agent's own and `all`),
merged into stream order (merge.py) -> for each message: verify + apply (in a worker
thread: the engine blocks on netlink and fsync) -> ack -> status to the bucket -> result
event. Status also goes to the bucket
on every state change and every 30 s. nats-py reconnects by itself once connected; the
consumers are durable, so commands queued while the agent was away arrive afterwards."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError

from agent.channel import wire
from agent.channel.commands import Commands
from agent.channel.merge import in_stream_order
from agent.channel.settings import public_url

STATUS_EVERY_S = 30.0
CHANGE_POLL_S = 1.0
RETRY_S = (0.5, 5.0)
REDELIVER_S = 5.0  # a command that could not be stored comes back after this
ACK_WAIT_S = 15.0  # redelivery if the agent dies between apply and ack, or a delivery is lost
                   # with a cluster node; a longer apply keeps its message with +WPI (in_progress)
ACK_RETRY_S = 30.0  # how long a lost ack is sent again before the channel reconnects


def durable_name(agent_id: str, broadcast: bool) -> str:
    return f"cordon-{agent_id}" + ("-all" if broadcast else "")


class Channel:
    def __init__(self, console, agent_id: str, commands: Commands, engine, log) -> None:
        self.console, self.agent_id, self.commands, self.engine, self.log = console, agent_id, commands, engine, log
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._status_now: asyncio.Event | None = None
        self._reported = None   # the engine state last written to the status bucket
        # One status write at a time: the periodic loop must not compute a document before a
        # command's apply and write it after the command's own, newer one (a stale `fleet`).
        self._status_lock: asyncio.Lock | None = None
        # what `status` shows (describe): set in the loop's thread, read by any
        self.connected = False
        self.server: str | None = None          # scheme://host:port connected to
        self.since: str | None = None           # when `connected` last changed
        self.reconnects = 0
        self.last_message_at: str | None = None  # the last command message received
        self._nc = None

    def describe(self) -> dict:
        """The `channel` section of `status`: is the console reachable, through which
        server, since when, and when a command last arrived."""
        return {"agent_id": self.agent_id, "servers": [public_url(u) for u in self.console.servers],
                "connected": self.connected, "server": self.server if self.connected else None,
                "since": self.since, "reconnects": self.reconnects,
                "last_message_at": self.last_message_at, "problem": None}

    def _set_connected(self, nc, up: bool) -> None:
        url = nc.connected_url if up and nc is not None else None
        self.server = f"{url.scheme}://{url.hostname}:{url.port}" if url is not None else None
        self.connected, self.since = up, wire.rfc3339(wire.utcnow())

    # -- thread ----------------------------------------------------------------------
    def start(self) -> "Channel":
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # never take the agent down; say why the channel stopped
            self.log.error("console_channel_stopped", error=repr(exc))

    # -- connection ------------------------------------------------------------------
    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop, self._status_now = asyncio.Event(), asyncio.Event()
        self._status_lock = asyncio.Lock()
        backoff = RETRY_S[0]
        while not self._stop.is_set():
            try:
                nc = await nats.connect(**self._options())
            except Exception as exc:
                self.log.info("console_unreachable", servers=list(self.console.servers), error=str(exc) or repr(exc),
                              retry_s=backoff)
                if await self._sleep(backoff):
                    return
                backoff = min(RETRY_S[1], backoff * 2)
                continue
            backoff = RETRY_S[0]
            self._nc = nc
            self._set_connected(nc, True)
            self.log.info("console_connected", server=self.server, agent_id=self.agent_id)
            try:
                await self._serve(nc)
            except Exception as exc:
                self.log.error("console_channel_error", error=repr(exc))
                await self._sleep(backoff)
            finally:
                self._set_connected(nc, False)
                try:
                    await nc.close()
                except Exception:
                    pass

    def _options(self) -> dict:
        async def disconnected():
            self._set_connected(None, False)
            self.log.warning("console_disconnected")

        async def reconnected():
            self.reconnects += 1
            self._set_connected(self._nc, True)
            self.log.info("console_reconnected", server=self.server)
            self._status_now.set()

        async def error(exc):
            self.log.info("console_transport_error", error=str(exc) or repr(exc))

        opts = dict(servers=list(self.console.servers), name=f"cordon-agent-{self.agent_id}",
                    connect_timeout=2, reconnect_time_wait=1, max_reconnect_attempts=-1,
                    allow_reconnect=True, ping_interval=20, max_outstanding_pings=3,
                    disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error)
        if self.console.credentials:
            opts["user_credentials"] = self.console.credentials
        return opts

    async def _sleep(self, seconds: float) -> bool:
        """Wait, but wake at stop; True when stopping."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    # -- serving ---------------------------------------------------------------------
    async def _serve(self, nc) -> None:
        js = nc.jetstream()
        info = await ensure_stream(js)
        # The stream's sequence numbers the commands; a stream created anew starts again at 1.
        self.commands.guard.bind_stream(wire.rfc3339(info.created) if info.created else None, info.state.last_seq)
        kv = self._kv = await ensure_bucket(js)
        subs = {}
        for broadcast in (False, True):
            subject = wire.command_subject(wire.ALL if broadcast else self.agent_id)
            durable = durable_name(self.agent_id, broadcast)
            await ensure_consumer(js, ConsumerConfig(
                durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW if broadcast else DeliverPolicy.ALL,
                ack_wait=ACK_WAIT_S, max_ack_pending=1))   # one at a time: a queue in stream order
            subs[durable] = await js.pull_subscribe(subject, durable=durable, stream=wire.STREAM)
        # In the fleet before saying so: a console that lists the fleet once this agent is
        # subscribed must find it there (`isolate all` waits for the agents it lists).
        # The status loop retries if this put failed.
        await self._report(kv)
        self.log.info("console_subscribed", agent_id=self.agent_id, stream=wire.STREAM)
        tasks = [asyncio.create_task(self._consume(nc, js, subs)), asyncio.create_task(self._status_loop(kv))]
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
        for t in [*tasks, stop]:
            t.cancel()
        for t in done:
            if t is not stop and t.exception():
                raise t.exception()

    async def _consume(self, nc, js, subs: dict) -> None:
        async for msg in in_stream_order(js, subs, lambda: nc.is_closed):
            await self._one(nc, msg)

    async def _one(self, nc, msg) -> None:
        seq = msg.metadata.sequence.stream
        self.last_message_at = wire.rfc3339(wire.utcnow())
        async with self._status_lock:              # no periodic status computed across this apply
            work = asyncio.ensure_future(asyncio.to_thread(self.commands.handle, msg.subject, msg.data, seq,
                                                           msg.metadata.num_delivered > 1))
            while not (await asyncio.wait({work}, timeout=ACK_WAIT_S / 3))[0]:
                try:                               # still applying: not to be redelivered meanwhile
                    await msg.in_progress()
                except Exception:
                    pass
            event = work.result()
            if event.pop("redeliver", False):      # not stored: leave it to the broker to retry
                await msg.nak(delay=REDELIVER_S)
            else:
                await self._ack(nc, msg, event)    # durable and applied (or rejected): done
            status = event.pop("_status", None)
            if status is not None:                 # the apply's own read-back: no second one
                if await self._put_status(self._kv, status):
                    self._reported = self.engine.state
        try:
            await nc.publish(wire.event_subject(self.agent_id), json.dumps(event).encode())
        except Exception as exc:
            self.log.info("console_event_not_sent", error=repr(exc), command_id=event["id"])

    async def _ack(self, nc, msg, event: dict) -> None:
        """Ack until the broker confirms it. A cluster node lost mid-command drops the
        connection (nats-py moves to another node) or the consumer's leader (the group
        elects another): the same ack, sent again, lands there. Giving up would have
        the broker redeliver what is already applied (answered then as a duplicate).
        Past ACK_RETRY_S the error goes up and the channel reconnects."""
        deadline = time.monotonic() + ACK_RETRY_S
        delay = 0.2
        while True:
            try:
                await msg.ack_sync(timeout=2)
                return
            except Exception as exc:
                if nc.is_closed or time.monotonic() + delay > deadline:
                    raise
                self.log.info("console_ack_retry", command_id=event.get("id"), error=str(exc) or repr(exc))
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    # -- status ----------------------------------------------------------------------
    async def _status_loop(self, kv) -> None:
        last_put = 0.0
        while True:
            state = self.engine.state
            due = time.monotonic() - last_put >= STATUS_EVERY_S
            if state is not self._reported or due or self._status_now.is_set():
                self._status_now.clear()
                if await self._report(kv):
                    last_put = time.monotonic()
            try:
                await asyncio.wait_for(self._status_now.wait(), CHANGE_POLL_S)
            except asyncio.TimeoutError:
                pass

    async def _report(self, kv) -> bool:
        """Put the engine's status now, under the status lock (no apply in between), and
        remember the state it reported; False if the put failed."""
        async with self._status_lock:
            state = self.engine.state
            if not await self._put_status(kv):
                return False
            self._reported = state
            return True

    async def _put_status(self, kv, doc: dict | None = None) -> bool:
        try:
            doc = dict(doc) if doc is not None else await asyncio.to_thread(self.engine.status)
            doc["agent_id"] = self.agent_id
            doc["reported_at"] = wire.rfc3339(wire.utcnow())
            await kv.put(self.agent_id, json.dumps(doc, sort_keys=True).encode())
            return True
        except Exception as exc:
            self.log.debug("console_status_not_sent", error=repr(exc))
            return False


async def ensure_stream(js):
    """Whoever connects first (agent or console) creates the stream (DESIGN §10); its info."""
    try:
        return await js.stream_info(wire.STREAM)
    except NotFoundError:
        try:
            await js.add_stream(StreamConfig(name=wire.STREAM, subjects=[wire.STREAM_SUBJECTS],
                                             max_age=wire.STREAM_MAX_AGE_S))
        except Exception:
            pass   # another client won the race
        return await js.stream_info(wire.STREAM)


async def ensure_consumer(js, cfg: ConsumerConfig) -> None:
    """Create the durable consumer, or bring an existing one (an older agent's) to
    max_ack_pending 1, which the merge into stream order relies on."""
    try:
        ci = await js.consumer_info(wire.STREAM, cfg.durable_name)
    except NotFoundError:
        await js.add_consumer(wire.STREAM, config=cfg)
        return
    if ci.config.max_ack_pending != cfg.max_ack_pending:
        ci.config.max_ack_pending = cfg.max_ack_pending
        await js.add_consumer(wire.STREAM, config=ci.config)


async def ensure_bucket(js):
    try:
        return await js.key_value(wire.STATUS_BUCKET)
    except BucketNotFoundError:
        from nats.js.api import KeyValueConfig
        return await js.create_key_value(KeyValueConfig(bucket=wire.STATUS_BUCKET, history=1))
