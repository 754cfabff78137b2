"""The console channel (DESIGN §10): signed commands over NATS JetStream.

    channel = start(config, engine, server, log)   # None without a [console] section

wire (format, keys, tokens) · verify (envelope checks) · replay (used ids on disk) ·
commands (verify + apply through the engine) · settings (the [console] section) ·
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
    if commands is None:
        return None
    from agent.channel.runner import Channel
    return Channel(config.console, me, commands, engine, log).start()
