"""Where an installed agent keeps its files, per OS: the one place these paths are chosen.

Linux follows the FHS and the systemd unit (StateDirectory, RuntimeDirectory, LogsDirectory).
macOS has a sealed, read-only system volume: nothing under /usr or /System, and no /run;
the writable places are /Library (the data volume) and /var/run (cleared at boot, like
/run). The pkg (packaging/macos) installs exactly these paths.
Windows keeps everything under %ProgramData%\\Cordon and talks on the named pipe
\\\\.\\pipe\\cordon (platforms.windows.paths; the installer sets their ACLs).

The config file may override state_dir and control_socket; the audit log goes to
$LOGS_DIRECTORY (set by systemd's LogsDirectory=, by the launchd plist and, on Windows, by
agent.winservice) when set.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Paths:
    config: str          # the agent config (TOML)
    state_dir: str       # durable state, the pf token, the agent lock
    control_socket: str  # the local control channel
    logs_dir: str        # the audit log and the service's own output
    console_key: str     # the console's public key ([console].public_key)


LINUX = Paths(config="/etc/cordon/agent.toml",
              state_dir="/var/lib/cordon",
              control_socket="/run/cordon/control.sock",
              logs_dir="/var/log/cordon",
              console_key="/etc/cordon/console.pub")

MACOS_SUPPORT = "/Library/Application Support/Cordon"
MACOS = Paths(config=f"{MACOS_SUPPORT}/agent.toml",
              state_dir=f"{MACOS_SUPPORT}/state",
              control_socket="/var/run/cordon/control.sock",
              logs_dir="/Library/Logs/Cordon",
              console_key=f"{MACOS_SUPPORT}/console.pub")

_BY_PLATFORM = {"linux": LINUX, "darwin": MACOS}


def windows(environ=os.environ) -> Paths:
    from platforms.windows.paths import windows_paths
    w = windows_paths(environ=environ)
    return Paths(config=w.config, state_dir=w.state_dir, control_socket=w.pipe, logs_dir=w.logs_dir,
                 console_key=w.console_key)


def paths_for(platform: str, environ=os.environ) -> Paths:
    """The layout for a `sys.platform` value; other Unixes get the Linux one."""
    if platform.startswith("win"):
        return windows(environ)
    return _BY_PLATFORM.get(platform, LINUX)


def installed() -> Paths:
    """This machine's layout (read at call time, so config defaults follow the OS)."""
    return paths_for(sys.platform)


def control_address_problem(value: str, platform: str | None = None) -> str | None:
    """Why `control_socket` cannot be this platform's control channel, or None."""
    platform = platform or sys.platform
    if "\0" in value:
        return "must not contain NUL"
    if platform.startswith("win"):
        prefix = "\\\\.\\pipe\\"
        if not value.lower().startswith(prefix) or len(value) == len(prefix) or "\\" in value[len(prefix):]:
            return "must be a local named pipe, \\\\.\\pipe\\NAME"
        return None
    return None if value.startswith("/") else "must be an absolute path"
