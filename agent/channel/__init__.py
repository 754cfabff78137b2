"""The console channel (DESIGN §10): signed commands over NATS JetStream.

    channel = start(config, engine, server, log)   # None without a [console] section
    status()["channel"]                            # connected, server, last_message_at (runner.describe)

wire (format, keys, tokens) · verify (envelope checks) · replay (used ids and the last
applied stream sequence, on disk) · commands (verify + apply through the engine) ·
settings (the [console] section) · merge (the two consumers in stream order) ·
runner (the NATS connection in its own asyncio thread)."""
from __future__ import annotations


def start(config, engine, server, log):
    """Gate local release behind a release token and connect to the console."""
    if config.console is None:
        return None
    from agent.channel import wire
    from agent.channel.commands import Commands, local_release
    from agent.channel.replay import ReplayGuard
    from agent.channel.settings import agent_id

    commands, why = None, None
    try:
        me = agent_id(config.console)
        key = wire.load_public_key(config.console.public_key)
        commands = Commands(engine, key, me, ReplayGuard(config.state_dir), log)
    except (OSError, RuntimeError, wire.WireError) as exc:
        why = str(exc)
        log.error("console_disabled", reason=why)
    server.release_gate = lambda args, actor: local_release(commands, why, args, actor)
    if commands is None:   # `status` says why there is no channel
        engine.channel_status = lambda: disabled_status(config.console, why)
        return None
    from agent.channel.runner import Channel
    channel = Channel(config.console, me, commands, engine, log)
    engine.channel_status = channel.describe
    return channel.start()


def disabled_status(console, why: str) -> dict:
    """The `channel` section of `status` when [console] is configured but not running."""
    from agent.channel.settings import public_url
    return {"agent_id": console.agent_id or None, "servers": [public_url(u) for u in console.servers],
            "connected": False, "server": None, "since": None, "reconnects": 0, "last_message_at": None,
            "problem": why}
