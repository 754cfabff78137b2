"""How the agent gets into the guest: offline, through the read-only 9p share.

- DebInstaller: the `.deb` from packaging/deb/build.sh, `dpkg -i`; the upgrade is the same
  package rebuilt with a higher version (dpkg-deb repack: a real dpkg upgrade with the
  package's own maintainer scripts); removal is `apt-get purge`.
- VenvInstaller (only while build.sh does not exist): wheels built here from the
  worktree, a venv at /opt/cordon in the guest, the repo's systemd unit. Says so in the
  report; it proves the service and the agent, not the package's scripts.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

from tests.harness.lab import REPO_ROOT

DEB_BUILD = os.path.join(REPO_ROOT, "packaging", "deb", "build.sh")


def _run(argv, **kw) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {(r.stderr or r.stdout)[-1500:]}")
    return r.stdout


class DebInstaller:
    kind = "deb"

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.deb = ""
        self.upgrade_deb = ""

    def build(self) -> None:
        out = os.path.join(self.workdir, "deb")
        os.makedirs(out, exist_ok=True)
        printed = _run(["bash", DEB_BUILD, "--out", out], cwd=REPO_ROOT, timeout=900)
        self.deb = printed.strip().splitlines()[-1].strip()
        if not self.deb.endswith(".deb") or not os.path.exists(self.deb):
            raise RuntimeError(f"{DEB_BUILD} printed no .deb path (last line {self.deb!r})")
        self.upgrade_deb = self._bumped(self.deb)

    def _bumped(self, deb: str) -> str:
        tree = os.path.join(self.workdir, "repack")
        shutil.rmtree(tree, ignore_errors=True)
        _run(["dpkg-deb", "-R", deb, tree])
        control = os.path.join(tree, "DEBIAN", "control")
        lines = open(control).read().splitlines()
        version = next(l.split(":", 1)[1].strip() for l in lines if l.startswith("Version:"))
        with open(control, "w") as f:
            f.write("\n".join(f"Version: {version}+vmtest1" if l.startswith("Version:") else l
                              for l in lines) + "\n")
        out = os.path.join(self.workdir, f"cordon_{version}+vmtest1_amd64.deb")
        _run(["dpkg-deb", "--root-owner-group", "-b", tree, out])
        return out

    def install(self, lab) -> None:
        path = lab.share_file(os.path.basename(self.deb), src=self.deb)
        lab.guest.succeed(lab.with_share(f"DEBIAN_FRONTEND=noninteractive dpkg -i {path}"), timeout=300)

    def upgrade(self, lab) -> None:
        path = lab.share_file(os.path.basename(self.upgrade_deb), src=self.upgrade_deb)
        lab.guest.succeed(lab.with_share(
            f"DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold {path}"), timeout=300)

    def version(self, lab) -> str:
        return lab.guest.succeed("dpkg-query -W -f '${Version}' cordon").strip()

    def purge(self, lab) -> None:
        lab.guest.succeed("DEBIAN_FRONTEND=noninteractive apt-get purge -y cordon", timeout=300)

    def leftovers(self, lab) -> str:
        """Anything of the package still on the guest after purge (empty = nothing)."""
        return lab.guest.execute(
            "dpkg-query -W -f '${Status}\\n' cordon 2>/dev/null | grep -v not-installed; "
            "ls -d /opt/cordon /etc/cordon /var/lib/cordon /var/log/cordon /run/cordon "
            "/usr/bin/cordon /lib/systemd/system/cordon.service /etc/systemd/system/cordon.service "
            "/etc/systemd/system/multi-user.target.wants/cordon.service 2>/dev/null; "
            "nft list tables | grep cordon")[1].strip()


class VenvInstaller:
    kind = "venv (no packaging/deb/build.sh yet)"
    UNIT = os.path.join(REPO_ROOT, "packaging", "systemd", "cordon.service")

    def __init__(self, workdir: str) -> None:
        self.wheels = os.path.join(workdir, "wheels")

    def build(self) -> None:
        os.makedirs(self.wheels, exist_ok=True)
        pip = [os.path.join(REPO_ROOT, ".venv", "bin", "python"), "-m", "pip"]
        _run([*pip, "wheel", "-q", "--wheel-dir", self.wheels, REPO_ROOT], timeout=600)
        _run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "-d", self.wheels, "pip"], timeout=300)

    def _stage(self, lab) -> None:
        dst = os.path.join(lab.share, "wheels")
        if not os.path.isdir(dst):
            shutil.copytree(self.wheels, dst)
        lab.share_file("cordon.service", src=self.UNIT)

    def install(self, lab) -> None:
        self._stage(lab)
        lab.guest.succeed(lab.with_share(
            "python3 -m venv --without-pip /opt/cordon && /opt/cordon/bin/python "
            f"/mnt/share/wheels/{os.path.basename(glob.glob(os.path.join(self.wheels, 'pip-*.whl'))[0])}/pip "
            "install -q --no-index --find-links /mnt/share/wheels cordon && "
            "ln -sf /opt/cordon/bin/cordon /usr/bin/cordon && mkdir -p /etc/cordon && "
            "cp /mnt/share/cordon.service /etc/systemd/system/cordon.service"), timeout=600)
        lab.guest.succeed("systemctl daemon-reload && systemctl enable --now cordon.service", timeout=120)

    def upgrade(self, lab) -> None:
        """The files are replaced under a running agent, then the service restarts."""
        self._stage(lab)
        lab.guest.succeed(lab.with_share(
            "/opt/cordon/bin/python /mnt/share/wheels/"
            f"{os.path.basename(glob.glob(os.path.join(self.wheels, 'pip-*.whl'))[0])}/pip "
            "install -q --no-index --force-reinstall --no-deps --find-links /mnt/share/wheels cordon"),
            timeout=600)
        lab.guest.succeed("systemctl restart cordon.service", timeout=120)

    def version(self, lab) -> str:
        return lab.guest.succeed("/opt/cordon/bin/python -m pip --version >/dev/null 2>&1; "
                                 "cordon --version 2>/dev/null || echo unknown").strip()

    def purge(self, lab) -> None:
        lab.guest.succeed("systemctl disable --now cordon.service; rm -rf /opt/cordon /etc/cordon "
                          "/var/lib/cordon /run/cordon /usr/bin/cordon /etc/systemd/system/cordon.service"
                          " && systemctl daemon-reload")

    def leftovers(self, lab) -> str:
        return lab.guest.execute("ls -d /opt/cordon /etc/cordon /var/lib/cordon /usr/bin/cordon "
                                 "/etc/systemd/system/cordon.service 2>/dev/null; "
                                 "nft list tables | grep cordon")[1].strip()


def installer(workdir: str):
    return DebInstaller(workdir) if os.path.exists(DEB_BUILD) else VenvInstaller(workdir)
