r"""Install (or repair) the Cordon service: `python -m platforms.windows.install --exe PATH`
(packaging/windows/install-service.ps1 runs it elevated).

- %ProgramData%\Cordon (config), its `state` and `logs` directories, each with a protected
  DACL and Administrators as owner (acl.py); a directory that some other account created
  before the install is refused, not adopted (it may hold planted files).
- The service: own process as LocalSystem, command line `"<exe>" run --config "<config>"`
  (quoted: an unquoted path with spaces would run C:\Program.exe), automatic start, not
  delayed (it must enforce early in boot), after the Base Filtering Engine (WinDivert's
  driver registers WFP callouts, so BFE must run first).
- Started only when the config exists (an agent without one would only fail and restart).
- Recovery: restart on every failure (the last action repeats for any later failure, so
  the SCM never gives up on an agent that may be isolating the host), the failure count
  reset after a day, and the actions also apply when the agent stops with a non-zero exit
  code (FailureActionsOnNonCrashFailures).
"""
from __future__ import annotations

import argparse
import ntpath
import sys

from platforms.windows import acl
from platforms.windows.paths import WindowsPaths, windows_paths
from platforms.windows.service import SERVICE_NAME
from platforms.windows.abi import ERROR_SERVICE_EXISTS, SERVICE_AUTO_START, WinApiError
from platforms.windows.winapi import WinApi

DISPLAY_NAME = "Cordon endpoint isolation agent"
DESCRIPTION = "Isolates this host on request of the incident responder."
DEPENDENCIES = ("BFE",)
RESET_PERIOD_S = 86_400
RESTART_DELAYS_MS = (0, 1_000, 5_000)   # immediately, then a short back-off; the last repeats
ALREADY_RUNNING = 1056                   # ERROR_SERVICE_ALREADY_RUNNING
TRUSTED_OWNERS = (acl.SID_SYSTEM, acl.SID_ADMINISTRATORS)


class InstallError(Exception):
    pass


def layout(paths: WindowsPaths) -> dict[str, str]:
    r"""Each directory of %ProgramData%\Cordon and its security descriptor, parents first."""
    return {paths.root: acl.READABLE_DIR_SDDL, paths.state_dir: acl.READABLE_DIR_SDDL,
            paths.logs_dir: acl.PRIVATE_DIR_SDDL}


def command_line(exe: str, config: str) -> str:
    for part, what in ((exe, "--exe"), (config, "the config path")):
        if '"' in part or not ntpath.isabs(part):
            raise InstallError(f"{what} must be an absolute path without quotes: {part!r}")
    return f'"{exe}" run --config "{config}"'


def install(api, exe: str, paths: WindowsPaths, start: bool = True) -> None:
    dirs = layout(paths)
    for path in dirs:
        owner = api.owner_sid(path)
        if owner is not None and owner not in TRUSTED_OWNERS:
            raise InstallError(f"{path} already exists and belongs to {owner}, not to SYSTEM or "
                               "Administrators: remove it and install again")
    for path, sddl in dirs.items():
        api.secure_directory(path, sddl)
    cmd = command_line(exe, paths.config)
    scm = api.open_scm()
    try:
        try:
            svc = api.create_service(scm, SERVICE_NAME, DISPLAY_NAME, cmd, SERVICE_AUTO_START, DEPENDENCIES)
        except WinApiError as exc:
            if exc.code != ERROR_SERVICE_EXISTS:
                raise
            svc = api.open_service(scm, SERVICE_NAME)   # an upgrade or a repair: same settings
            api.change_service(svc, DISPLAY_NAME, cmd, SERVICE_AUTO_START, DEPENDENCIES)
        try:
            api.set_description(svc, DESCRIPTION)
            api.set_failure_actions(svc, RESET_PERIOD_S, RESTART_DELAYS_MS)
            api.set_failure_actions_on_non_crash(svc, True)
            api.set_delayed_auto_start(svc, False)
            if start and not api.path_exists(paths.config):
                start = False
                print(f"not started: write {paths.config} first (see cordon(8)), then: sc.exe start {SERVICE_NAME}")
            if start:
                try:
                    api.start_service(svc)
                except WinApiError as exc:
                    if exc.code != ALREADY_RUNNING:
                        raise
        finally:
            api.close_service_handle(svc)
    finally:
        api.close_service_handle(scm)


def main(argv: list[str] | None = None, api=None) -> int:
    p = argparse.ArgumentParser(prog="python -m platforms.windows.install", description=__doc__.split("\n")[0])
    p.add_argument("--exe", required=True, help="the installed cordon.exe")
    p.add_argument("--program-data", default=None, help=r"default: %%ProgramData%% (C:\ProgramData)")
    p.add_argument("--no-start", action="store_true", help="install without starting the service")
    args = p.parse_args(argv)
    try:
        install(api if api is not None else WinApi(), args.exe, windows_paths(args.program_data),
                start=not args.no_start)
    except (InstallError, WinApiError) as exc:
        print(f"install: {exc}", file=sys.stderr)
        return 1
    print(f"installed the {SERVICE_NAME} service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
