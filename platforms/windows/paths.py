r"""Where Cordon lives on Windows: everything under %ProgramData%\Cordon, the control channel
on the named pipe \\.\pipe\cordon (agent.paths picks these on win32; the installer secures them)."""
from __future__ import annotations

import ntpath
import os
from dataclasses import dataclass

PIPE_NAME = r"\\.\pipe\cordon"
DEFAULT_PROGRAM_DATA = r"C:\ProgramData"


@dataclass(frozen=True)
class WindowsPaths:
    root: str
    config: str
    state_dir: str
    logs_dir: str
    console_key: str
    pipe: str = PIPE_NAME


def windows_paths(program_data: str | None = None, environ=os.environ) -> WindowsPaths:
    base = program_data or environ.get("ProgramData") or DEFAULT_PROGRAM_DATA
    root = ntpath.join(base, "Cordon")
    return WindowsPaths(root=root, config=ntpath.join(root, "agent.toml"), state_dir=ntpath.join(root, "state"),
                        logs_dir=ntpath.join(root, "logs"), console_key=ntpath.join(root, "console.pub"))
