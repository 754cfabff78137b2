"""The CLI's offline commands and exit codes; the agent-facing ones are covered end to end."""
import json
import subprocess
import sys

import pytest

from agent.cli import main
from tests.conftest import EXAMPLES, ROOT

VALID = sorted((EXAMPLES / "policies" / "valid").glob("*.json"))
INVALID = sorted((EXAMPLES / "policies" / "invalid").glob("*.json"))


def test_examples_exist():
    assert len(VALID) >= 3 and len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_validate_valid_examples(path, capsys):
    assert main(["policy", "validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


EXPECTED_FIELD = {
    "bad-ports.json": "outbound[0].ports", "duplicate.json": "outbound[1]",
    "enabled-without-exceptions.json": "enabled", "everything.json": "outbound[0].address",
    "host-bits-set.json": "outbound[0].address", "hostname.json": "outbound[0].address",
    "icmp-with-ports.json": "outbound[0].ports", "ipv6.json": "outbound[0].address",
    "leading-zeros.json": "outbound[0].address", "truncated.json": "not valid JSON",
    "typo-key.json": "enable", "version-zero.json": "version",
    "wildcard-host.json": "outbound[0].host", "address-and-host.json": "outbound[0].host",
    "expired.json": "outbound[0].expires_at",
}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_validate_invalid_examples(path, capsys):
    assert main(["policy", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert path.name in err and f"  {EXPECTED_FIELD[path.name]}" in err


def test_validate_as_a_real_process_without_privileges():
    """No agent, no root: run the installed entry point as nobody when we can."""
    cmd = [sys.executable, "-m", "agent.cli", "policy", "validate", str(INVALID[0])]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "invalid policy" in r.stderr


def test_missing_file_and_bad_usage(capsys, tmp_path):
    assert main(["policy", "validate", str(tmp_path / "nope.json")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["isolate", "--bogus"])
    assert info.value.code == 2


def test_status_without_agent_exits_3_and_shows_persisted_state(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\ncontrol_socket = "{tmp_path}/c.sock"\n'
                   '[vendor]\nendpoints = [{ address = "198.51.100.10", protocol = "tcp", ports = "443" }]\n')
    assert main(["status", "--json", "--config", str(cfg)]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "normal" and out["agent"]["pid"] is None and out["agent"]["running"] is False


@pytest.mark.parametrize("cmd", [["isolate"], ["release"], ["policy", "show"]])
def test_agent_commands_without_agent_exit_3(tmp_path, cmd):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\ncontrol_socket = "{tmp_path}/c.sock"\n'
                   '[vendor]\nendpoints = [{ address = "198.51.100.10", protocol = "tcp", ports = "443" }]\n')
    assert main(cmd + ["--config", str(cfg)]) == 3


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('sensor_typo = "x"\n[vendor]\nendpoints = [{ address = "198.51.100.10", protocol = "tcp", ports = "443" }]\n')
    assert main(["status", "--config", str(cfg)]) == 2
    assert "sensor_typo" in capsys.readouterr().err


def test_unavailable_backend_is_a_clear_failure(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'backend = "pf"\nstate_dir = "{tmp_path}/state"\ncontrol_socket = "{tmp_path}/c.sock"\n'
                   '[vendor]\nendpoints = [{ address = "198.51.100.10", protocol = "tcp", ports = "443" }]\n')
    assert main(["run", "--config", str(cfg)]) == 1  # pfctl does not exist on Linux
    assert "pf" in capsys.readouterr().err
    assert not (tmp_path / "state" / "state.json").exists() and not (tmp_path / "c.sock").exists()
