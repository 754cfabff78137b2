"""DESIGN §7: a full disk or a read-only state dir. The command fails with exit 1 and the
OS reason, and nothing changes: not the stored state, not the rules in force. Real
filesystems (a tiny tmpfs as the state dir); the firewall is the in-memory backend."""
import os
import shutil
import subprocess
import tempfile
import threading

import pytest

from agent import client
from agent.cli import main
from agent.config import parse_config
from agent.engine import Engine
from agent.errors import EXIT_FAILURE
from agent.log import configure, health
from agent.server import ControlServer
from agent.store import Store
from tests.unit.memory_backend import MemoryBackend

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")


@pytest.fixture
def small_disk():
    d = tempfile.mkdtemp(prefix="cordon-disk-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", d], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


@pytest.fixture
def agent(small_disk, tmp_path):
    state_dir = os.path.join(small_disk, "state")
    config = parse_config({"state_dir": state_dir, "control_socket": str(tmp_path / "c.sock"),
                           "vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}})
    log = configure(config.audit_log, stream=open(os.devnull, "w"))
    backend = MemoryBackend()
    engine = Engine(config, Store(state_dir), backend, log, health=health)
    engine.start()
    server = ControlServer(config.control_socket, engine, log)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{state_dir}"\ncontrol_socket = "{config.control_socket}"\n'
                   '[vendor]\nendpoints = [{ address = "198.51.100.10", protocol = "tcp", ports = "443" }]\n')
    yield str(cfg), small_disk, state_dir, engine, backend
    server.close()


def fill(disk):
    fd = os.open(os.path.join(disk, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def snapshot(state_dir, backend):
    p = os.path.join(state_dir, "state.json")
    return (open(p, "rb").read() if os.path.exists(p) else None, backend.installed)


@pytest.mark.parametrize("start_isolated", [False, True])
def test_full_disk_fails_with_the_os_reason_and_changes_nothing(agent, capsys, start_isolated):
    cfg, disk, state_dir, engine, backend = agent
    if start_isolated:
        assert main(["isolate", "--config", cfg]) == 0
    before = snapshot(state_dir, backend)
    fill(disk)
    capsys.readouterr()
    assert main(["release" if start_isolated else "isolate", "--config", cfg]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "cannot store state: No space left on device" in err, err
    assert snapshot(state_dir, backend) == before
    st = client.call(engine.config.control_socket, "status")
    assert st["state"] == ("isolated" if start_isolated else "normal")
    assert st["backend"]["enforcing"] is True


def test_read_only_state_dir_fails_with_the_os_reason_and_changes_nothing(agent, capsys):
    cfg, disk, state_dir, engine, backend = agent
    assert main(["isolate", "--strict", "--config", cfg]) == 0
    before = snapshot(state_dir, backend)
    # a read-only bind mount over the state dir (the open audit log keeps writing to the
    # mount below, so this changes only what the agent opens from now on)
    subprocess.run(["mount", "--bind", state_dir, state_dir], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", state_dir], check=True)
    capsys.readouterr()
    assert main(["release", "--config", cfg]) == EXIT_FAILURE
    assert "cannot store state: Read-only file system" in capsys.readouterr().err
    assert snapshot(state_dir, backend) == before
    st = client.call(engine.config.control_socket, "status")
    assert st["state"] == "isolated" and st["backend"]["enforcing"] is True


def test_vanished_state_dir_fails_with_exit_1_and_changes_nothing(agent, capsys):
    cfg, disk, state_dir, engine, backend = agent
    assert main(["isolate", "--config", cfg]) == 0
    installed = backend.installed
    shutil.rmtree(state_dir)
    open(state_dir, "w").close()   # a file where the dir was: it cannot be recreated
    capsys.readouterr()
    assert main(["release", "--config", cfg]) == EXIT_FAILURE
    assert "cannot store state" in capsys.readouterr().err
    assert backend.installed == installed and engine.state.state == "isolated"
