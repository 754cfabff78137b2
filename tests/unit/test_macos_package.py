"""The macOS pkg (issue 19): packaging/macos/build.py lays out the payload tree and scripts
(pkgbuild exists on macOS only, so here the tree is what is checked). Expectations are the
platform's facts, not the build script's own tables: launchd wants a root-owned plist nobody
else can write, the system volume is sealed (only /Library and /private are writable), macOS
has no python3 (the plist must run an interpreter the tree ships)."""
from __future__ import annotations

import os
import plistlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import parse_config

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging/macos/build.py"
DATA_VOLUME_ROOTS = {"Library", "private"}  # payload top levels the pkg may write on macOS 11+


def fake_runtime(root: Path) -> Path:
    """The shape of an unpacked relocatable CPython for macOS (python-build-standalone)."""
    (root / "bin").mkdir(parents=True)
    (root / "bin/python3.11").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(root / "bin/python3.11", 0o755)
    os.symlink("python3.11", root / "bin/python3")
    (root / "lib/python3.11/site-packages").mkdir(parents=True)
    (root / "lib/python3.11/os.py").write_text("# stdlib stand-in\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("macpkg")
    runtime = fake_runtime(tmp / "runtime")
    out = tmp / "out"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no pkgbuild on this machine
    r = subprocess.run([sys.executable, str(BUILD), "--runtime", str(runtime), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    payload = Path(r.stdout.strip().splitlines()[-1])
    assert payload == out / "payload" and "pkgbuild not found" in r.stderr
    return payload, out / "scripts"


def installed(payload: Path, absolute: str) -> Path:
    return payload / absolute.lstrip("/")


def test_layout(built):
    payload, scripts = built
    assert {p.name for p in payload.iterdir()} <= DATA_VOLUME_ROOTS
    site = installed(payload, "/Library/Cordon/python/lib/python3.11/site-packages")
    for path in ["/Library/LaunchDaemons/com.cordon.agent.plist", "/Library/Cordon/python/bin/python3",
                 "/Library/Cordon/bin/cordon", "/Library/Cordon/bin/cordon-console",
                 "/Library/Application Support/Cordon/agent.toml.default", "/private/etc/paths.d/cordon"]:
        assert installed(payload, path).is_file(), path
    assert installed(payload, "/Library/Logs/Cordon").is_dir()
    for module in ["agent/cli.py", "agent/peercred.py", "agent/paths.py", "platforms/pf/backend.py", "console/cli.py"]:
        assert (site / module).is_file(), module
    assert not list(payload.rglob("__pycache__"))
    assert sorted(p.name for p in scripts.iterdir()) == ["postinstall", "preinstall"]
    assert installed(payload, "/private/etc/paths.d/cordon").read_text().split() == ["/Library/Cordon/bin"]


def test_modes_and_owners(built):
    payload, scripts = built
    mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)  # noqa: E731
    assert mode(installed(payload, "/Library/LaunchDaemons/com.cordon.agent.plist")) == 0o644
    assert mode(installed(payload, "/Library/Application Support/Cordon/agent.toml.default")) == 0o644
    assert mode(installed(payload, "/Library/Logs/Cordon")) == 0o750
    for exe in ["/Library/Cordon/bin/cordon", "/Library/Cordon/bin/cordon-console", "/Library/Cordon/python/bin/python3.11"]:
        assert mode(installed(payload, exe)) == 0o755, exe
    assert mode(scripts / "preinstall") == mode(scripts / "postinstall") == 0o755
    for p in [payload, *payload.rglob("*"), scripts, *scripts.iterdir()]:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            continue
        assert not st.st_mode & 0o022, f"{p} is writable by group or others"
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{p} is setuid/setgid"
        if os.geteuid() == 0:  # built as root: root:wheel (uid 0, gid 0 on macOS), as pkgbuild installs it
            assert (st.st_uid, st.st_gid) == (0, 0), p


def test_plist_runs_what_the_tree_ships(built):
    payload, _ = built
    with open(installed(payload, "/Library/LaunchDaemons/com.cordon.agent.plist"), "rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "com.cordon.agent"
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True  # at boot, and always restarted
    assert isinstance(plist["ThrottleInterval"], int) and 1 <= plist["ThrottleInterval"] <= 10
    argv = plist["ProgramArguments"]
    interpreter = installed(payload, argv[0])
    assert argv[0].startswith("/Library/") and interpreter.exists() and os.access(interpreter, os.X_OK)
    assert argv[1:] == ["-I", "-m", "agent.cli", "run"]
    site = next(installed(payload, "/Library/Cordon/python/lib").glob("python3.*/site-packages"))
    assert (site / "agent/cli.py").is_file()
    for key in ("StandardErrorPath", "StandardOutPath"):
        assert plist[key].startswith("/Library/Logs/") and installed(payload, os.path.dirname(plist[key])).is_dir()
    assert installed(payload, plist["EnvironmentVariables"]["LOGS_DIRECTORY"]).is_dir()
    assert installed(payload, plist["WorkingDirectory"]).is_dir()


def test_wrappers_run_the_shipped_interpreter_isolated(built):
    payload, _ = built
    for name, module in [("cordon", "agent.cli"), ("cordon-console", "console.cli")]:
        text = installed(payload, f"/Library/Cordon/bin/{name}").read_text()
        assert text.startswith("#!/bin/sh\n")
        exec_line = [ln for ln in text.splitlines() if ln.startswith("exec ")][0].split()
        assert exec_line[1:5] == ["/Library/Cordon/python/bin/python3", "-I", "-m", module]
        assert installed(payload, exec_line[1]).exists()


def test_shipped_config_uses_paths_on_the_data_volume(built, monkeypatch):
    payload, _ = built
    import tomllib
    doc = tomllib.loads(installed(payload, "/Library/Application Support/Cordon/agent.toml.default").read_text())
    config = parse_config(doc)
    for path in (config.state_dir, config.control_socket):
        assert path.startswith(("/Library/", "/var/run/")), path
    monkeypatch.setattr(sys, "platform", "darwin")  # the same as the agent's own macOS defaults
    defaults = parse_config({"vendor": doc["vendor"]})
    assert (config.state_dir, config.control_socket) == (defaults.state_dir, defaults.control_socket)


def run_script(scripts: Path, name: str, volume: Path) -> subprocess.CompletedProcess:
    # /bin/launchctl does not exist here: a script that called it for another volume would fail.
    return subprocess.run(["/bin/sh", str(scripts / name), "/tmp/cordon.pkg", "/", str(volume) + "/", str(volume)],
                          capture_output=True, text=True, timeout=60)


def test_scripts_are_posix_sh(built):
    _, scripts = built
    for name in ("preinstall", "postinstall"):
        assert subprocess.run(["/bin/sh", "-n", str(scripts / name)]).returncode == 0


def test_postinstall_installs_the_config_once_and_keeps_the_admins(built, tmp_path):
    payload, scripts = built
    volume = tmp_path / "volume"
    shutil.copytree(payload, volume, symlinks=True)
    config = installed(volume, "/Library/Application Support/Cordon/agent.toml")
    default = installed(volume, "/Library/Application Support/Cordon/agent.toml.default")
    assert run_script(scripts, "preinstall", volume).returncode == 0
    r = run_script(scripts, "postinstall", volume)
    assert r.returncode == 0, r.stderr
    assert config.read_text() == default.read_text() and stat.S_IMODE(config.stat().st_mode) == 0o644
    config.write_text(config.read_text().replace('sensor_type    = "endpoint_sensor"', 'sensor_type = "security_agent"'))
    edited = config.read_text()
    assert run_script(scripts, "postinstall", volume).returncode == 0  # an upgrade
    assert config.read_text() == edited
