#!/usr/bin/env python3
"""Builds the macOS pkg's payload tree and scripts, and the pkg itself where `pkgbuild` exists.

    python3 packaging/macos/build.py --runtime DIR [--out DIR] [--version VERSION] [--deps DIR]

--runtime: an unpacked relocatable CPython for macOS (e.g. python-build-standalone's
  `install_only` tree: bin/python3, lib/python3.X/): macOS ships no python3, so the pkg
  carries its own, at /Library/Cordon/python.
--deps: a directory of Cordon's dependencies built for that runtime (`pip install --target`);
  on macOS, without --deps, the runtime's own pip installs them. Elsewhere they are left out
  (the tree is then for layout checks only) and a warning says so.
--out: where `payload/`, `scripts/` and the .pkg go (default: dist/macos in the repository).

Everything lands on the data volume (the system volume is sealed): /Library/Cordon (runtime
and code), /Library/LaunchDaemons, /Library/Application Support/Cordon (config, state),
/Library/Logs/Cordon, /private/etc/paths.d (puts `cordon` on PATH). Owners are root:wheel
(pkgbuild --ownership recommended); modes are set here and checked by
tests/unit/test_macos_package.py. The last line printed is the pkg, or the payload tree.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from agent.paths import MACOS  # noqa: E402  (the one place the installed paths are chosen)

IDENTIFIER = "com.cordon.agent"
PREFIX = "Library/Cordon"                      # /Library/Cordon: runtime, code, wrappers
PLIST = "Library/LaunchDaemons/com.cordon.agent.plist"
PACKAGES = ("agent", "platforms", "console")   # Cordon's own code, from this work tree
WRAPPER = """#!/bin/sh
# {name}: the pkg's own interpreter, isolated from PYTHON* variables and user site dirs.
exec /Library/Cordon/python/bin/python3 -I -m {module} "$@"
"""
ENTRY_POINTS = {"cordon": "agent.cli", "cordon-console": "console.cli"}


def rel(path: str) -> str:
    """An installed absolute path as a payload-relative one."""
    return path.lstrip("/")


def build_tree(out: Path, runtime: Path, deps: Path | None) -> tuple[Path, Path]:
    payload, scripts = out / "payload", out / "scripts"
    for d in (payload, scripts):
        if d.exists():
            shutil.rmtree(d)
    python = runtime / "bin" / "python3"
    if not python.is_file():
        raise SystemExit(f"build.py: {runtime} is not a Python runtime (no bin/python3)")
    shutil.copytree(runtime, payload / PREFIX / "python", symlinks=True)
    site = site_packages(payload / PREFIX / "python")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pkg in PACKAGES:
        if (REPO / pkg).is_dir():
            shutil.copytree(REPO / pkg, site / pkg, ignore=ignore)
    if deps is not None:
        shutil.copytree(deps, site, dirs_exist_ok=True, ignore=ignore)
    elif sys.platform == "darwin":
        subprocess.run([str(payload / PREFIX / "python/bin/python3"), "-m", "pip", "install", "--no-compile",
                        "--target", str(site), *dependencies()], check=True)
    else:
        print("build.py: warning: dependencies not bundled (not on macOS and no --deps): "
              "this tree is for layout checks only", file=sys.stderr)

    bin_dir = payload / PREFIX / "bin"
    bin_dir.mkdir(parents=True)
    for name, module in ENTRY_POINTS.items():
        (bin_dir / name).write_text(WRAPPER.format(name=name, module=module))
    (payload / "Library/LaunchDaemons").mkdir(parents=True)
    shutil.copy(REPO / "packaging/launchd/com.cordon.agent.plist", payload / PLIST)
    support = payload / rel(os.path.dirname(MACOS.config))
    support.mkdir(parents=True)
    (support / "agent.toml.default").write_text(macos_config())
    (payload / rel(MACOS.logs_dir)).mkdir(parents=True)
    (payload / "private/etc/paths.d").mkdir(parents=True)
    (payload / "private/etc/paths.d/cordon").write_text("/Library/Cordon/bin\n")

    scripts.mkdir(parents=True)
    for name in ("preinstall", "postinstall"):
        shutil.copy(REPO / "packaging/macos/scripts" / name, scripts / name)
    set_modes(payload, scripts)
    return payload, scripts


def site_packages(python_root: Path) -> Path:
    found = sorted(python_root.glob("lib/python3.*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"build.py: expected one lib/python3.X/site-packages in the runtime, found {len(found)}")
    return found[0]


def dependencies() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def macos_config() -> str:
    """The shipped example config with this platform's paths (a pkg has no conffiles:
    postinstall copies it to agent.toml only when there is none)."""
    text = (REPO / "packaging/examples/agent.toml").read_text()
    out = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in ("state_dir", "control_socket"):
            comment = line[line.index("#"):] if "#" in line else ""
            line = f'{key:<15}= "{getattr(MACOS, key)}"' + (f"  {comment}" if comment else "")
        out.append(line.replace("/etc/cordon/console.pub", MACOS.console_key))
    return "\n".join(out) + "\n"


def set_modes(payload: Path, scripts: Path) -> None:
    """Directories 0755, files 0644, executables 0755; the logs dir 0750 (the audit log is
    for administrators); owner root:wheel (uid 0, gid 0) when built as root."""
    for base in (payload, scripts):
        for dirpath, dirnames, filenames in os.walk(base):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                p = Path(dirpath) / f
                if p.is_symlink():
                    continue
                os.chmod(p, 0o755 if os.access(p, os.X_OK) or base == scripts else 0o644)
    for name in ENTRY_POINTS:
        os.chmod(payload / PREFIX / "bin" / name, 0o755)
    os.chmod(payload / rel(MACOS.logs_dir), 0o750)
    if os.geteuid() == 0:
        for base in (payload, scripts):
            for dirpath, dirnames, filenames in os.walk(base):
                for p in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
                    os.lchown(p, 0, 0)


def build_pkg(payload: Path, scripts: Path, out: Path, version: str) -> Path | None:
    pkgbuild = shutil.which("pkgbuild")
    if pkgbuild is None:
        return None
    pkg = out / f"cordon-{version}.pkg"
    subprocess.run([pkgbuild, "--root", str(payload), "--scripts", str(scripts), "--identifier", IDENTIFIER,
                    "--version", version, "--install-location", "/", "--ownership", "recommended", str(pkg)],
                   check=True)
    return pkg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build the macOS pkg payload (and the pkg where pkgbuild exists)")
    p.add_argument("--runtime", type=Path, required=True, help="unpacked relocatable CPython for macOS")
    p.add_argument("--deps", type=Path, help="Cordon's dependencies built for that runtime (pip --target)")
    p.add_argument("--out", type=Path, default=REPO / "dist" / "macos")
    p.add_argument("--version", default=tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    payload, scripts = build_tree(args.out, args.runtime, args.deps)
    pkg = build_pkg(payload, scripts, args.out, args.version)
    if pkg is None:
        print("build.py: pkgbuild not found (macOS only): payload tree and scripts laid out", file=sys.stderr)
    print(pkg or payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
