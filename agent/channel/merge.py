"""One order for the agent's two consumers: its own subject and `all` (DESIGN §10).

    async for msg in in_stream_order(js, {durable: pull_subscription, ...}, is_closed):
        ...apply, then ack or nak msg...   # the next fetch on its consumer waits for this

The console's order is the stream's: the broker numbers every command it stores, across
both subjects. nats-server 2.9 has no consumer with two filters and one consumer over
`cordon.v1.cmd.*` would hand every agent every other agent's commands, so the agent reads
two consumers and merges them here. Each consumer has max_ack_pending 1: the broker
hands out its messages one at a time, lowest unacked first (a redelivery is that same
message), so a consumer is a queue in sequence order. A message (the lowest head) is
released only when the other consumer is known to hold nothing older: it has a head of
its own with a higher sequence, or its consumer info (asked after the message was
delivered) shows nothing undelivered and nothing unacked below it. Otherwise wait for
that consumer's own delivery (e.g. a message lost in a reconnect comes back after
ack_wait) — a later command never overtakes an earlier one.

Why the consumer info is proof (nats-server 2.9.10, consumer.go): num_pending is counted
from the store at the time of the request (FilteredState from the consumer's next
sequence), not from the signals that wake consumers, which trail the publish ack; with
one message unacked the consumer scans no further, so delivered.stream_seq is that
message. The console's publish is acked once stored, so an older command is in the store
before a newer one exists. In a cluster the other consumer's leader reads its own replica,
which can trail the stream's leader by one replication step: a command that loses that
race is refused as superseded (replay.py), never applied out of order."""
from __future__ import annotations

import asyncio

import nats

from agent.channel import wire

FETCH_WAIT_S = 5.0       # one lingering pull; re-issued while nothing arrives
RECHECK_S = 0.5          # how often a blocked head asks again about the other consumer


def seq_of(msg) -> int:
    return msg.metadata.sequence.stream


async def _fetch_one(sub, is_closed):
    """The consumer's next message, or None when the pull expired with nothing."""
    try:
        return (await sub.fetch(batch=1, timeout=FETCH_WAIT_S))[0]
    except (nats.errors.TimeoutError, asyncio.TimeoutError):
        return None
    except Exception:          # disconnected: nats-py reconnects; try again shortly
        if is_closed():
            raise
        await asyncio.sleep(RECHECK_S)
        return None


async def nothing_older(js, durable: str, seq: int) -> bool:
    """The broker's word that consumer `durable` holds no message below `seq`: nothing
    undelivered and nothing unacked, or its one unacked message (max_ack_pending 1:
    the last delivered) is newer. Any message stored later has a higher sequence."""
    try:
        ci = await js.consumer_info(wire.STREAM, durable)
    except Exception:          # not answered now: not known, so not released
        return False
    if ci.num_pending == 0 and ci.num_ack_pending == 0:
        return True
    return ci.num_ack_pending == 1 and ci.delivered.stream_seq > seq


async def in_stream_order(js, subs: dict, is_closed):
    """Messages of all `subs` (durable name -> pull subscription), lowest stream
    sequence first. The caller acks (or naks) each before asking for the next."""
    fetches: dict[str, asyncio.Task] = {}
    heads: dict[str, object] = {}
    try:
        while True:
            for durable, sub in subs.items():
                if durable not in heads and durable not in fetches:
                    fetches[durable] = asyncio.create_task(_fetch_one(sub, is_closed))
            if not heads:
                await asyncio.wait(fetches.values(), return_when=asyncio.FIRST_COMPLETED)
            for durable, task in list(fetches.items()):
                if task.done():
                    del fetches[durable]
                    msg = task.result()
                    if msg is not None:
                        heads[durable] = msg
            if not heads:
                continue
            durable, msg = min(heads.items(), key=lambda kv: seq_of(kv[1]))
            others = [d for d in subs if d not in heads]
            if all([await nothing_older(js, d, seq_of(msg)) for d in others]):
                del heads[durable]
                yield msg
                continue
            waiting = [fetches[d] for d in others if d in fetches]
            if waiting:
                await asyncio.wait(waiting, timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(RECHECK_S)
    finally:
        for task in fetches.values():
            task.cancel()
