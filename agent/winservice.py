"""`cordon run` on Windows: under the Service Control Manager when the SCM started it, in the
foreground (like on Linux) when started from a console."""
from __future__ import annotations

from agent import daemon
from agent.config import Config


def run(config: Config, api=None) -> int:
    from platforms.windows.service import NotUnderScm, ServiceRunner
    if api is None:
        from platforms.windows.winapi import WinApi
        api = WinApi()
    runner = ServiceRunner(api, lambda stop, serving: daemon.run(config, stop=stop, on_serving=serving))
    try:
        return runner.run()
    except NotUnderScm:
        return daemon.run(config)
