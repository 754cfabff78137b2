"""The console's side of the channel: one NATS connection, publish a signed command and
wait for each target agent's result event, read the fleet's status bucket."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import nats
import nats.js.errors
from nats.js.errors import KeyNotFoundError, NoKeysError

from agent.channel import wire
from agent.channel.runner import durable_name, ensure_bucket, ensure_stream


class ConsoleError(Exception):
    """The console could not do its job (broker unreachable, ...); exit 1."""


RECONNECTS = 20      # a cluster node lost mid-command: the session moves to another one


class Session:
    def __init__(self, servers: list[str], connect_timeout: float = 5.0) -> None:
        self.servers, self.connect_timeout = servers, connect_timeout
        self.nc = self.js = self.kv = None
        self.disconnects = 0   # result events (core NATS) published meanwhile were not seen

    async def _disconnected(self) -> None:
        self.disconnects += 1

    async def __aenter__(self) -> "Session":
        try:
            self.nc = await nats.connect(servers=self.servers, connect_timeout=self.connect_timeout,
                                         allow_reconnect=True, max_reconnect_attempts=RECONNECTS,
                                         reconnect_time_wait=0.5, disconnected_cb=self._disconnected,
                                         name="cordon-console")
        except Exception as exc:
            raise ConsoleError(f"cannot reach the broker at {', '.join(self.servers)}: {exc or repr(exc)}") from None
        self.js = self.nc.jetstream()
        await ensure_stream(self.js)
        self.kv = await ensure_bucket(self.js)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def fleet(self) -> dict[str, dict]:
        """agent id -> its last status document (with `reported_at`)."""
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return {}
        out = {}
        for k in sorted(keys):
            try:
                entry = await self.kv.get(k)
            except KeyNotFoundError:  # deleted or purged since keys() listed it
                continue
            try:
                out[k] = json.loads(entry.value)
            except (TypeError, ValueError):
                out[k] = {"agent_id": k, "state": "?", "unreadable": True}
        return out

    async def command(self, target: str, action: str, args: dict, key, valid: timedelta,
                      agents: list[str], timeout: float) -> tuple[dict, dict[str, dict | None]]:
        """Publish one signed command; return it and agent -> result event (None: no ack
        within `timeout`). Listens for events before publishing, so none is missed."""
        cmd = wire.new_command(target, action, args, valid)
        return cmd, await self.send(wire.command_subject(target), wire.sign(cmd, key), cmd["id"], agents, timeout)

    async def send(self, subject: str, body: bytes, cid: str | None, agents: list[str],
                   timeout: float) -> dict[str, dict | None]:
        results: dict[str, dict | None] = {a: None for a in agents}
        done = asyncio.Event()

        async def on_event(msg):
            try:
                ev = json.loads(msg.data)
            except ValueError:
                return
            if ev.get("agent") in results and results[ev["agent"]] is None and ev.get("id") == cid:
                results[ev["agent"]] = ev
                if all(v is not None for v in results.values()):
                    done.set()

        sub = await self.nc.subscribe(wire.EVENT_PREFIX + "*", cb=on_event)
        try:
            await self.nc.flush()
            seen_disconnects = self.disconnects
            deadline = time.monotonic() + timeout
            seq = await self._publish(subject, body, cid, deadline)
            while agents and not done.is_set() and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(done.wait(), min(1.0, max(0.0, deadline - time.monotonic())))
                except asyncio.TimeoutError:
                    pass
                if self.disconnects != seen_disconnects and not done.is_set():
                    await self._acked_meanwhile(subject, seq, cid, results)
                    if all(v is not None for v in results.values()):
                        done.set()
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        return results

    async def _publish(self, subject: str, body: bytes, cid: str | None, deadline: float) -> int:
        """Into the stream until the broker confirms it stored it; its sequence number. A
        cluster node lost meanwhile can cost the stream's leader (a new one is elected)
        and so the publish ack, while the message is stored: the retry carries the same
        Nats-Msg-Id (the command id), so JetStream's duplicate window keeps one copy."""
        headers = {"Nats-Msg-Id": cid} if cid else None
        delay = 0.25
        while True:
            try:
                return (await self.js.publish(subject, body, stream=wire.STREAM, timeout=2, headers=headers)).seq
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.APIError,
                    nats.errors.ConnectionReconnectingError) as exc:
                if time.monotonic() + delay > deadline:
                    raise ConsoleError(f"the broker did not confirm storing the command: {exc!r}") from None
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _acked_meanwhile(self, subject: str, seq: int, cid: str | None, results: dict) -> None:
        """After a reconnect: an agent whose durable consumer acked the command (its ack
        floor passed `seq`: the broker's own record) while the session was away gets an
        `acked` outcome with its status-bucket document; its result event was missed."""
        broadcast = subject == wire.command_subject(wire.ALL)
        for agent in [a for a, v in results.items() if v is None]:
            try:
                ci = await self.js.consumer_info(wire.STREAM, durable_name(agent, broadcast))
                if ci.ack_floor.stream_seq < seq:
                    continue
                status = json.loads((await self.kv.get(agent)).value)
            except Exception:
                continue
            results[agent] = {"agent": agent, "id": cid, "seq": seq, "outcome": "acked", "status": status}
