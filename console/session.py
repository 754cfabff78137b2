"""The console's side of the channel: one NATS connection, publish a signed command and
wait for each target agent's result event, read the fleet's status bucket."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import nats
from nats.js.errors import NoKeysError

from agent.channel import wire
from agent.channel.runner import ensure_bucket, ensure_stream


class ConsoleError(Exception):
    """The console could not do its job (broker unreachable, ...); exit 1."""


class Session:
    def __init__(self, servers: list[str], connect_timeout: float = 5.0) -> None:
        self.servers, self.connect_timeout = servers, connect_timeout
        self.nc = self.js = self.kv = None

    async def __aenter__(self) -> "Session":
        try:
            self.nc = await nats.connect(servers=self.servers, connect_timeout=self.connect_timeout,
                                         allow_reconnect=False, max_reconnect_attempts=0, name="cordon-console")
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
            entry = await self.kv.get(k)
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
            await self.js.publish(subject, body, stream=wire.STREAM)
            if agents:
                deadline = time.monotonic() + timeout
                try:
                    await asyncio.wait_for(done.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
        finally:
            await sub.unsubscribe()
        return results
