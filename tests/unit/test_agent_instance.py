"""Issue 14: one agent per state dir, a safe state dir, and a bounded audit log."""
import json
import os
import subprocess
import sys
import threading

import pytest

from agent import instance
from agent.log import RateLimited, configure, health
from tests.unit.memory_backend import MemoryBackend  # noqa: F401  (keeps the import graph honest)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_second_agent_on_the_same_state_dir_exits_1_naming_the_pid(tmp_path):
    """Defect: a second `cordon run` silently took over (unlinked the live socket)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from agent import instance; instance.acquire(sys.argv[1]);"
                               "print('locked', flush=True); sys.stdin.read()", str(state)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(instance.AlreadyRunning) as info:
            instance.acquire(state)
        assert f"pid {holder.pid}" in str(info.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    os.close(instance.acquire(state))  # the lock died with its holder


def test_cordon_run_refuses_while_another_agent_holds_the_lock(tmp_path, capsys):
    from agent.cli import main
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'backend = "nftables"\nstate_dir = "{state}"\ncontrol_socket = "{tmp_path}/c.sock"\n'
                   '[vendor]\nendpoints = [{ address = "198.51.100.10", protocol = "tcp", ports = "443" }]\n')
    fd = instance.acquire(state)
    try:
        assert main(["run", "--config", str(cfg)]) == 1
    finally:
        os.close(fd)
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "c.sock").exists() and not (state / "state.json").exists()


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_state_dir_writable_by_others_is_refused(tmp_path, mode):
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(instance.UnsafeStateDir, match="writable by group or others"):
        instance.check_state_dir(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_state_dir_owned_by_another_user_is_refused(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chown(d, 65534, 65534)
    with pytest.raises(instance.UnsafeStateDir, match="owned by uid 65534"):
        instance.check_state_dir(d)


def test_state_dir_symlink_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o755)
    (tmp_path / "state").symlink_to(tmp_path / "real")
    with pytest.raises(instance.UnsafeStateDir, match="symlink"):
        instance.check_state_dir(tmp_path / "state")


def test_audit_log_is_not_opened_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "audit.log").symlink_to(target)
    log = configure(tmp_path / "audit.log", stream=open(os.devnull, "w"))
    log.info("isolated", mode="strict")
    assert target.read_text() == ""
    h = health()
    assert h["ok"] is False and "symbolic links" in h["last_error"]


def test_rejected_input_writes_only_a_short_escaped_excerpt(tmp_path):
    """Defect: 20 rejected requests from `nobody` wrote 105 MB into the audit log."""
    path = tmp_path / "audit.log"
    log = configure(path, stream=open(os.devnull, "w"))
    limited = RateLimited(log, rate=0.0, burst=5)
    for _ in range(20):
        limited.event(65534, "command_rejected", reason="x" * 5_000_000 + "\x1b[2J", caller_uid=65534)
    lines = path.read_text().splitlines()
    assert len(lines) == 5          # the rest were held back, not written
    assert path.stat().st_size < 5 * 1024
    assert "\x1b" not in path.read_text()
    assert json.loads(lines[0])["reason"].endswith("(5000004 characters)")


def test_audit_log_is_capped_by_rotation(tmp_path):
    from agent import log as logmod
    path = tmp_path / "audit.log"
    tee = logmod._TeeLogger(path, stream=open(os.devnull, "w"), max_bytes=64 * 1024)
    for i in range(10_000):
        tee.msg(json.dumps({"event": "tamper_detected", "n": i, "pad": "y" * 100}))
    assert path.stat().st_size < 64 * 1024 + 8 * 1024
    assert (tmp_path / "audit.log.1").stat().st_size < 64 * 1024 + 8 * 1024
    assert json.loads(path.read_text().splitlines()[-1])["n"] == 9_999


def test_audit_write_failures_are_counted_for_status(tmp_path):
    from agent import log as logmod
    tee = logmod._TeeLogger(tmp_path / "audit.log", stream=open(os.devnull, "w"))
    tee.audit._fh.close()  # any write now fails
    tee.msg("{}")
    assert tee.health()["ok"] is False and tee.health()["write_failures"] >= 1


def test_rate_limit_reports_what_it_held_back(tmp_path):
    now = [0.0]
    out = []

    class Sink:
        def warning(self, name, **kw):
            out.append(kw)

    limited = RateLimited(Sink(), rate=1.0, burst=1, clock=lambda: now[0])
    assert limited.event(1, "x") and not limited.event(1, "x") and not limited.event(1, "x")
    assert limited.event(2, "x")   # another uid has its own budget
    now[0] = 5.0
    assert limited.event(1, "x") and out[-1]["suppressed"] == 2
