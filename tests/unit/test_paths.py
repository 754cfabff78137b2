"""Installed paths per OS (agent.paths), against the platform facts, not against themselves:
Linux = DESIGN §2/§8; macOS = only places that are writable on a sealed system volume."""
import sys

import pytest

from agent import paths
from agent.config import parse_config

VENDOR = {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}
# macOS 11+: the system volume (/System, /usr except firmlinked parts, /bin, /sbin) is sealed
# and read-only; there is no /run. /Library and /var (= /private/var) are on the data volume.
READ_ONLY_ON_MACOS = ("/System/", "/usr/", "/bin/", "/sbin/", "/run/")
WRITABLE_ON_MACOS = ("/Library/", "/var/run/", "/private/var/")
SUN_PATH_MAX = {"darwin": 104, "linux": 108}  # sizeof(sockaddr_un.sun_path)


def all_paths(p: paths.Paths) -> dict:
    return {"config": p.config, "state_dir": p.state_dir, "control_socket": p.control_socket,
            "logs_dir": p.logs_dir, "console_key": p.console_key}


def test_linux_paths_are_the_designed_ones():
    assert all_paths(paths.paths_for("linux")) == {
        "config": "/etc/cordon/agent.toml", "state_dir": "/var/lib/cordon",
        "control_socket": "/run/cordon/control.sock", "logs_dir": "/var/log/cordon",
        "console_key": "/etc/cordon/console.pub"}


@pytest.mark.parametrize("name, path", all_paths(paths.paths_for("darwin")).items())
def test_macos_paths_exist_on_a_sealed_system_volume(name, path):
    assert path.startswith(WRITABLE_ON_MACOS), f"{name} = {path} is not on the data volume"
    assert not path.startswith(READ_ONLY_ON_MACOS)


def test_macos_socket_fits_sun_path():
    assert len(paths.paths_for("darwin").control_socket.encode()) < SUN_PATH_MAX["darwin"]
    assert len(paths.paths_for("linux").control_socket.encode()) < SUN_PATH_MAX["linux"]


def test_other_unixes_get_the_linux_layout():
    assert paths.paths_for("freebsd14") == paths.paths_for("linux")


def test_config_defaults_follow_the_os(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    c = parse_config({"vendor": VENDOR, "console": {"servers": ["nats://198.51.100.10:443"]}})
    assert c.state_dir == "/Library/Application Support/Cordon/state"
    assert c.control_socket == "/var/run/cordon/control.sock"
    assert c.console.public_key == "/Library/Application Support/Cordon/console.pub"
    monkeypatch.setattr(sys, "platform", "linux")
    c = parse_config({"vendor": VENDOR})
    assert (c.state_dir, c.control_socket) == ("/var/lib/cordon", "/run/cordon/control.sock")
