"""Where an installed agent keeps its files, per OS: the one place these paths are chosen.

Linux follows the FHS and the systemd unit (StateDirectory, RuntimeDirectory, LogsDirectory).
macOS has a sealed, read-only system volume: nothing under /usr or /System, and no /run;
the writable places are /Library (the data volume) and /var/run (cleared at boot, like
/run). The pkg (packaging/macos) installs exactly these paths.

The config file may override state_dir and control_socket; the audit log goes to
$LOGS_DIRECTORY (set by systemd's LogsDirectory= and by the launchd plist) when set.
"""
from __future__ import annotations

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


def paths_for(platform: str) -> Paths:
    """The layout for a `sys.platform` value; other Unixes get the Linux one."""
    return _BY_PLATFORM.get(platform, LINUX)


def installed() -> Paths:
    """This machine's layout (read at call time, so config defaults follow the OS)."""
    return paths_for(sys.platform)
