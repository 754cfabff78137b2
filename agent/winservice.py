"""`cordon run` on Windows: under the Service Control Manager when the SCM started it, in the
foreground (like on Linux) when started from a console.

The config is loaded after the process has connected to the SCM, so a bad or missing config
ends as STOPPED with its exit code (2: invalid input) instead of the SCM's "did not respond"
timeout; the installer's recovery actions then restart it at their pace."""
from __future__ import annotations

import os

from agent import daemon
from agent.paths import installed


def run(load_config, api=None) -> int:
    """load_config() -> Config (raises InvalidInput on a bad config)."""
    os.environ.setdefault("LOGS_DIRECTORY", installed().logs_dir)   # like systemd's LogsDirectory=
    from platforms.windows.service import NotUnderScm, ServiceRunner
    if api is None:
        from platforms.windows.winapi import WinApi
        api = WinApi()
    runner = ServiceRunner(api, lambda stop, serving: daemon.run(load_config(), stop=stop, on_serving=serving))
    try:
        return runner.run()
    except NotUnderScm:
        return daemon.run(load_config())
