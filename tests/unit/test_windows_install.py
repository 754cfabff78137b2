r"""The Windows installer against the fake OS API (tests/unit/fake_winapi.py): what the SCM's
service database and the directories' security hold afterwards, judged by the fake's own
command-line parser, access check and recovery rules, with expectations from DESIGN §7/§8
(SYSTEM/Administrators change, Users read; %ProgramData%\Cordon; a real service that
restarts whenever it fails and starts at boot)."""
import ntpath

import pytest

from agent.paths import paths_for
from platforms.windows import install
from platforms.windows.abi import ServiceStatus, WinApiError
from platforms.windows.winapi import WinApi
from tests.unit import fake_winapi as fw
from tests.unit.fake_scm import SERVICE_AUTO_START

EXE = r"C:\Program Files\Cordon\cordon.exe"
PD = r"C:\ProgramData"
ROOT = PD + r"\Cordon"
FILE_WRITE_DATA, FILE_ADD_SUBDIRECTORY = 0x2, 0x4


@pytest.fixture
def world():
    w = fw.World()
    w.plain_files.add(ROOT + r"\agent.toml")   # the admin wrote the config (cordon(8))
    return w


def installed(world, *extra) -> int:
    return install.main(["--exe", EXE, "--program-data", PD, *extra], api=world.process(fw.ELEVATED_ADMIN))


def test_service_runs_cordon_run_with_the_programdata_config(world):
    assert installed(world) == 0
    svc = world.scm.services["Cordon"]
    assert fw.command_line_argv(svc.command_line) == [EXE, "run", "--config", ROOT + r"\agent.toml"]
    assert svc.started == 1
    assert world.scm.open_handles == {}, "every SCM handle closed"


def test_starts_automatically_at_boot_not_delayed_and_after_the_filtering_engine(world):
    installed(world)
    svc = world.scm.services["Cordon"]
    assert svc.start_type == SERVICE_AUTO_START and svc.delayed is False
    assert "BFE" in svc.dependencies


def test_recovery_restarts_on_every_failure_and_on_an_error_exit(world):
    installed(world)
    svc = world.scm.services["Cordon"]
    assert [world.scm.recovery_after("Cordon", n)[0] for n in range(1, 20)] == ["restart"] * 19
    assert world.scm.recovery_after("Cordon", 1)[1] == 0, "the first restart is immediate (isolation may be down)"
    assert svc.reset_period_s and svc.reset_period_s > 0
    assert world.scm.recovers_from_stop("Cordon", ServiceStatus(fw.STOPPED, 0, 1066, 1))


def test_programdata_dirs_grant_exactly_what_design_says(world):
    installed(world)
    root, state, logs = ROOT, ROOT + r"\state", ROOT + r"\logs"
    assert set(world.files) == {root, state, logs}
    for path, sd in world.files.items():
        assert sd.protected, f"{path} inherits ProgramData's ACL (Users may create files there)"
        assert world.owners[path] == fw.BA, path
        for who in (fw.SYSTEM, fw.ELEVATED_ADMIN):
            assert fw.access_check(sd, who, fw.FILE_ALL_ACCESS), (path, who.user)
        for who in (fw.USER, fw.FILTERED_ADMIN, fw.ANONYMOUS):
            for right in (FILE_WRITE_DATA, FILE_ADD_SUBDIRECTORY, fw.GENERIC_WRITE):
                assert not fw.access_check(sd, who, right), (path, who.user, hex(right))
    # config and state: readable by any local user (status works with the agent down), logs not
    for path in (root, state):
        assert fw.access_check(world.files[path], fw.USER, fw.FILE_GENERIC_READ), path
    assert not fw.access_check(world.files[logs], fw.USER, fw.FILE_GENERIC_READ)
    assert not fw.access_check(world.files[root], fw.ANONYMOUS, fw.FILE_GENERIC_READ)


def test_the_agent_uses_the_directories_the_installer_secured(world):
    installed(world)
    p = paths_for("win32", {"ProgramData": PD})
    assert ntpath.dirname(p.config) in world.files and p.state_dir in world.files and p.logs_dir in world.files
    assert p.control_socket == r"\\.\pipe\cordon"
    assert p.config == ROOT + r"\agent.toml"


def test_linux_paths_are_the_documented_ones():
    p = paths_for("linux", {})
    assert (p.config, p.state_dir, p.control_socket) == ("/etc/cordon/agent.toml", "/var/lib/cordon",
                                                         "/run/cordon/control.sock")


def test_reinstall_repairs_the_same_service(world):
    assert installed(world) == 0
    world.scm.services["Cordon"].command_line = r"C:\evil.exe"
    world.scm.services["Cordon"].restart_delays_ms = ()
    assert installed(world) == 0
    svc = world.scm.services["Cordon"]
    assert fw.command_line_argv(svc.command_line)[0] == EXE and svc.restart_delays_ms
    assert world.scm.open_handles == {}


def test_a_directory_another_account_created_first_is_refused(world, capsys):
    world.owners[ROOT] = fw.USER.user   # Users may create folders in ProgramData
    assert installed(world) == 1
    assert "belongs to" in capsys.readouterr().err
    assert world.scm.services == {} and world.files == {}


@pytest.mark.parametrize("exe", [r"cordon.exe", r'C:\Program Files\Cordon\cor"don.exe'])
def test_a_relative_or_quoted_exe_is_refused(world, exe):
    assert install.main(["--exe", exe, "--program-data", PD], api=world.process(fw.ELEVATED_ADMIN)) == 1
    assert world.scm.services == {}


def test_without_a_config_it_installs_but_does_not_start(world, capsys):
    world.plain_files.clear()
    assert installed(world) == 0
    assert world.scm.services["Cordon"].started == 0
    assert "agent.toml" in capsys.readouterr().out


def test_no_start_installs_without_starting(world):
    assert installed(world, "--no-start") == 0
    assert world.scm.services["Cordon"].started == 0


def test_the_real_api_seam_imports_here_and_refuses_to_run():
    with pytest.raises(WinApiError):
        WinApi()


def test_the_powershell_script_runs_this_installer():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "packaging/windows/install-service.ps1").read_text()
    assert '"-m", "platforms.windows.install"' in text and "sc.exe" not in text
