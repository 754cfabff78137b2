"""The .deb (DESIGN §8), installed into a throwaway Debian 12 root file system (mmdebstrap,
cached by content hash) and exercised with chroot inside fresh namespaces: files, modes,
conffile, maintainer scripts, the unit's verify and security checks. Booting is the VM tier's.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from agent.store import AgentState, Store
from tests.conftest import ROOT

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOTFS_CMD = ["mmdebstrap", "--variant=minbase", "--include=python3,systemd,nftables,man-db",
              "--skip=check/empty", "bookworm"]
CACHE = Path(os.environ.get("CORDON_TEST_CACHE", "/var/cache/cordon-test"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Paths dpkg itself changes on any install or removal: not Cordon's leftovers.
DPKG_OWN = re.compile(r"^(var/lib/dpkg/|var/log/dpkg\.log|var/cache/debconf/|var/cache/man/|etc/ld\.so\.cache)")


@pytest.fixture(scope="session")
def rootfs_tar() -> Path:
    key = hashlib.sha256(" ".join(ROOTFS_CMD).encode()).hexdigest()[:16]
    tar = CACHE / f"rootfs-bookworm-{key}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        part = tar.with_name(f"{tar.stem}.part{os.getpid()}.tar")   # mmdebstrap: format by extension
        try:
            subprocess.run([*ROOTFS_CMD, str(part)], check=True, capture_output=True, timeout=1200)
            os.replace(part, tar)
        finally:
            part.unlink(missing_ok=True)
    return tar


@pytest.fixture(scope="session")
def debs(tmp_path_factory) -> tuple[Path, Path]:
    """The package from build.sh, and an upgrade: the same package with a higher version
    (repacked with dpkg-deb, so the upgrade path is tested without a second build)."""
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(["bash", str(ROOT / "packaging/deb/build.sh"), "--out", str(out)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    deb = Path(r.stdout.strip().splitlines()[-1])
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert deb.name == f"cordon_{VERSION}_{arch}.deb"
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"Version: {VERSION}\n", f"Version: {VERSION}+up1\n"))
    up = out / f"cordon_{VERSION}+up1_{arch}.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(tree), str(up)], check=True, capture_output=True)
    return deb, up


class Root:
    """One extracted root file system; `run` is chroot inside new net/mount/pid namespaces,
    so nothing a maintainer script does can reach the machine's own network."""

    def __init__(self, tar: Path) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cordon-rootfs-"))
        subprocess.run(["tar", "-xf", str(tar), "-C", str(self.path)], check=True)

    def run(self, script: str, check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork",
                            f"--mount-proc={self.path}/proc", "chroot", str(self.path), "sh", "-c", script],
                           capture_output=True, text=True, timeout=600,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check:
            assert r.returncode == 0, f"{script}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def put(self, src: Path) -> str:
        shutil.copy(src, self.path / "tmp" / src.name)
        return f"/tmp/{src.name}"

    def files(self) -> set[str]:
        out = set()
        for d, dirs, files in os.walk(self.path):
            rel = os.path.relpath(d, self.path)
            if rel.split(os.sep)[0] in ("proc", "tmp", "run", "dev", "sys"):
                dirs[:] = []
                continue
            out |= {os.path.normpath(os.path.join(rel, f)) for f in files + dirs}
        return {p for p in out if not DPKG_OWN.match(p)}

    def set_state(self, state: AgentState) -> None:
        Store(str(self.path / "var/lib/cordon")).save(state)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def root(rootfs_tar):
    r = Root(rootfs_tar)
    yield r
    r.close()


def mode(p: Path) -> int:
    return p.lstat().st_mode & 0o7777


def test_install_files_modes_conffile_and_service_enabled(root, debs):
    deb, _ = debs
    root.run(f"dpkg -i {root.put(deb)}", check=True)
    p = root.path
    assert os.readlink(p / "usr/bin/cordon") == "/opt/cordon/bin/cordon"
    assert root.run("cordon --version", check=True).stdout.strip() == f"cordon {VERSION}"
    assert mode(p / "etc/cordon/agent.toml") == 0o644
    assert "/etc/cordon/agent.toml" in (p / "var/lib/dpkg/info/cordon.conffiles").read_text().split()
    root.run("cordon config check", check=True)   # the shipped config is what the agent accepts
    for f in ("lib/systemd/system/cordon.service", "usr/share/man/man8/cordon.8.gz",
              "usr/share/bash-completion/completions/cordon", "etc/logrotate.d/cordon"):
        assert (p / f).is_file() and mode(p / f) == 0o644, f
    assert os.readlink(p / "etc/systemd/system/multi-user.target.wants/cordon.service").endswith("/cordon.service")
    shipped = root.run("dpkg -L cordon", check=True).stdout.split()
    assert not [f for f in shipped if "__pycache__" in f or f.endswith(".pyc")]   # compiled by postinst
    assert list((p / "opt/cordon/lib").rglob("__pycache__"))
    st = root.run("cordon status --json")   # agent down: exit 3, state normal, every key
    assert st.returncode == 3 and '"state": "normal"' in st.stdout
    if (p / "opt/cordon/bin/cordon-console").exists():
        assert os.readlink(p / "usr/bin/cordon-console") == "/opt/cordon/bin/cordon-console"


def test_unit_verifies_and_is_hardened(root, debs):
    root.run(f"dpkg -i {root.put(debs[0])}", check=True)
    v = root.run("systemd-analyze verify cordon.service")
    assert v.returncode == 0 and v.stderr.strip() == "", v.stderr
    sec = root.run("systemd-analyze security --offline=true cordon.service")
    score = float(re.search(r"Overall exposure level for cordon\.service: ([0-9.]+)", sec.stdout).group(1))
    assert score <= 3.0, sec.stdout
    unit = (root.path / "lib/systemd/system/cordon.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings["Type"] == "notify" and settings["Restart"] == "always" and float(settings["RestartSec"]) > 0
    assert settings["StartLimitIntervalSec"] == "0" and "WatchdogSec" in settings
    assert "network-pre.target" in settings["Before"] and "nftables.service" in settings["After"]
    assert "shutdown.target" in settings["Conflicts"]
    assert set(settings["CapabilityBoundingSet"].split()) <= {"CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}


def test_remove_is_refused_while_isolated_and_purge_leaves_nothing(root, debs):
    before = root.files()
    root.run(f"dpkg -i {root.put(debs[0])}", check=True)
    root.set_state(AgentState(state="isolated", mode="strict", since="2026-01-01T00:00:00Z"))
    r = root.run("dpkg -r cordon")
    assert r.returncode != 0 and "cordon release" in r.stderr and "ISOLATED" in r.stderr
    assert "install ok installed" in root.run("dpkg-query -W -f='${Status}' cordon", check=True).stdout
    assert (root.path / "usr/bin/cordon").is_symlink() and (root.path / "opt/cordon/bin/cordon").is_file()
    root.set_state(AgentState(state="normal", since="2026-01-02T00:00:00Z"))
    root.run("dpkg -r cordon", check=True)
    root.run("dpkg -P cordon", check=True)
    left = sorted(root.files() - before)
    assert left == [], left
    assert not (root.path / "etc/cordon").exists() and not (root.path / "var/lib/cordon").exists()


def test_remove_is_refused_when_the_state_cannot_be_read(root, debs):
    root.run(f"dpkg -i {root.put(debs[0])}", check=True)
    (root.path / "var/lib/cordon").mkdir(parents=True, exist_ok=True)
    (root.path / "var/lib/cordon/state.json").write_text("{not json")
    r = root.run("dpkg -r cordon")
    assert r.returncode != 0 and "cordon release" in r.stderr


def test_upgrade_while_isolated_keeps_the_state_and_the_config(root, debs):
    deb, up = debs
    root.run(f"dpkg -i {root.put(deb)}", check=True)
    conf = root.path / "etc/cordon/agent.toml"
    conf.write_text(conf.read_text().replace('dhcp        = true', 'dhcp        = false'))
    root.set_state(AgentState(state="isolated", mode="standard", since="2026-01-01T00:00:00Z"))
    state = (root.path / "var/lib/cordon/state.json").read_bytes()
    r = root.run(f"DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold {root.put(up)}")
    assert r.returncode == 0, r.stderr
    assert root.run("dpkg-query -W -f='${Version}' cordon", check=True).stdout == f"{VERSION}+up1"
    assert (root.path / "var/lib/cordon/state.json").read_bytes() == state
    assert "dhcp        = false" in conf.read_text()   # the admin's conffile edit survives
    assert '"state": "isolated"' in root.run("cordon status --json").stdout
