"""Where the agent keeps its config, state, logs and control channel, per platform: the one
place that chooses them (DESIGN §2, §8). The config's `state_dir` and `control_socket`
default to these; `--config` and `$CORDON_CONFIG` still win for the config file.

- Linux: /etc/cordon, /var/lib/cordon, /run/cordon/control.sock (logs: systemd's
  LogsDirectory, else the state dir);
- macOS: paths that exist on a sealed system volume: /Library/Application Support/Cordon
  and /var/run/cordon/control.sock;
- Windows: %ProgramData%\\Cordon (agent.toml, state, logs) and the named pipe
  \\\\.\\pipe\\cordon (platforms.windows.paths; the installer sets the ACLs).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Paths:
    config: str
    state_dir: str
    control_socket: str
    logs_dir: str | None   # None: $LOGS_DIRECTORY (systemd), else the state dir


def platform_paths(platform: str = sys.platform, environ=os.environ) -> Paths:
    if platform.startswith("win"):
        from platforms.windows.paths import windows_paths
        w = windows_paths(environ=environ)
        return Paths(w.config, w.state_dir, w.pipe, w.logs_dir)
    if platform == "darwin":
        base = "/Library/Application Support/Cordon"
        return Paths(f"{base}/agent.toml", base, "/var/run/cordon/control.sock", None)
    return Paths("/etc/cordon/agent.toml", "/var/lib/cordon", "/run/cordon/control.sock", None)


PATHS = platform_paths()


def control_address_problem(value: str, platform: str = sys.platform) -> str | None:
    """Why `control_socket` cannot be this platform's control channel, or None."""
    if "\0" in value:
        return "must not contain NUL"
    if platform.startswith("win"):
        prefix = "\\\\.\\pipe\\"
        if not value.lower().startswith(prefix) or len(value) == len(prefix) or "\\" in value[len(prefix):]:
            return "must be a local named pipe, \\\\.\\pipe\\NAME"
        return None
    return None if value.startswith("/") else "must be an absolute path"
