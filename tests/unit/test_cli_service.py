"""The CLI surface an endpoint administrator relies on (DESIGN §2, §8): --version, config
check, help on every option, status with the agent down, clear wording, exit codes."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest

from agent.cli import build_parser, main
from agent.store import AgentState, Store
from tests.conftest import EXAMPLES, ROOT
from tests.users import NOBODY, as_user

VENDOR = '[vendor]\nendpoints = [{ address = "198.51.100.10", protocol = "tcp", ports = "443" }]\n'
# Every key §2 promises in `status --json`, as dotted paths.
SECTION_2_KEYS = ["state", "mode", "since", "sensor_type", "policy.stored_version",
                  "policy.enforced_version", "backend.name", "backend.enforcing", "agent.pid",
                  "agent.version"]


def cordon(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, **kw)


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(f'state_dir = "{tmp_path}/state"\ncontrol_socket = "{tmp_path}/c.sock"\n' + VENDOR)
    os.chmod(tmp_path, 0o755)
    return path


def test_version_prints_the_project_version():
    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    r = cordon("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"cordon {want}")


def test_config_check_accepts_the_shipped_config():
    r = cordon("config", "check", str(EXAMPLES / "agent.toml"))
    assert r.returncode == 0 and "valid" in r.stdout


def test_config_check_names_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('sensor_typo = "x"\n' + VENDOR)
    r = cordon("config", "check", str(bad))
    assert r.returncode == 2 and str(bad) in r.stderr and "sensor_typo" in r.stderr
    r = cordon("config", "check", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "missing.toml" in r.stderr


def test_config_check_without_file_uses_cordon_config(cfg):
    r = cordon("config", "check", env=dict(os.environ, CORDON_CONFIG=str(cfg)))
    assert r.returncode == 0 and str(cfg) in r.stdout


def _walk(parser: argparse.ArgumentParser, path: str = "cordon"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", "(command)", helps.get(name)
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, "/".join(action.option_strings) or action.dest, action.help


def test_every_command_and_option_has_help_text():
    missing = [f"{path}: {opt}" for path, opt, text in _walk(build_parser())
               if not text or text == argparse.SUPPRESS]
    assert missing == []


def _get(doc: dict, dotted: str):
    for part in dotted.split("."):
        assert isinstance(doc, dict) and part in doc, f"status --json lacks {dotted}"
        doc = doc[part]
    return doc


def test_status_json_with_the_agent_down_has_every_key_and_a_reason(cfg):
    """As an unprivileged user the firewall cannot be read back: null plus a reason."""
    from agent.config import load_config
    from agent.offline_status import offline_status
    state_dir = cfg.parent / "state"
    Store(str(state_dir)).save(AgentState(state="isolated", mode="strict", since="2026-01-01T00:00:00Z"))
    d = str(state_dir)
    while d not in ("/", ""):  # any local user may read the state (a real install: /var/lib/cordon 0755)
        os.chmod(d, os.stat(d).st_mode | 0o005)
        d = os.path.dirname(d)
    config = load_config(str(cfg))

    def run() -> int:
        st = offline_status(config)
        for key in SECTION_2_KEYS:
            _get(st, key)
        ok = ((st["state"], st["mode"]) == ("isolated", "strict") and st["backend"]["name"] == "nftables"
              and st["backend"]["enforcing"] is None and "root" in st["backend"]["reason"]
              and st["agent"]["pid"] is None and st["policy"]["enforced_version"] is None)
        if not ok:
            print(json.dumps(st), file=sys.stderr)
        return 0 if ok else 99

    assert as_user(NOBODY, run) == 0


def test_status_json_with_the_agent_down_reads_back_as_root(cfg):
    """Root reads the firewall (this namespace holds no Cordon table): state normal is then
    enforced, and the keys are the same."""
    r = subprocess.run(["unshare", "--net", sys.executable, "-m", "agent.cli", "status", "--json",
                        "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    st = json.loads(r.stdout)
    for key in SECTION_2_KEYS:
        _get(st, key)
    assert st["state"] == "normal" and st["backend"]["enforcing"] is True and st["backend"]["rules_present"] is False


def test_normal_never_reads_as_isolation_enforced(cfg, capsys):
    assert main(["status", "--config", str(cfg)]) == 3
    text = capsys.readouterr().out
    assert re.search(r"^state\s+normal$", text, re.M)
    assert not re.search(r"enforc\w*\s+yes", text, re.I), text


def test_rules_with_a_bad_policy_names_the_file(cfg, tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"version": 1, "enabled": true, "outbound": [{"protocol": "tcp", "address": "203.0.113.5/24", "ports": "22"}]}')
    r = cordon("rules", "--policy", str(bad), "--config", str(cfg))
    assert r.returncode == 2 and str(bad) in r.stderr and "outbound[0].address" in r.stderr


@pytest.mark.parametrize("argv, code", [
    (["--version"], 0),
    (["policy", "validate", str(EXAMPLES / "policies" / "valid" / "disabled.json")], 0),
    (["policy", "validate", str(EXAMPLES / "policies" / "invalid" / "ipv6.json")], 2),
    (["isolate", "--no-such-option"], 2),
    (["status"], 3), (["isolate"], 3), (["release"], 3), (["policy", "show"], 3),
])
def test_exit_codes_follow_section_2(cfg, argv, code):
    assert cordon(*argv, env=dict(os.environ, CORDON_CONFIG=str(cfg))).returncode == code
