"""No child of the test runner, the harness or the product returns into its parent's code.

The incident this guards against: pyroute2 forked a child into a lab namespace; the child
inherited the lab's SIGTERM handler; a SIGTERM turned into SystemExit in the child, which
unwound through `with Lab()` (tearing down the parent's lab) and into pytest's loop, where
it went on running the rest of the suite as a second runner.

Each scenario runs in a separate Python process so that, on broken code, the damage stays
in that process and the test reports it instead of suffering it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.harness.lab import REPO_ROOT, load_factor
from tests.integration.nft_fixtures import bare_namespace

pytestmark = pytest.mark.root


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout * load_factor())


FORK_INTO_LAB_THEN_SIGTERM = """
    import os, signal, time
    from tests.harness import Lab, netns
    with Lab() as lab:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pyroute2's pattern: work in the namespace, then os._exit(0)
            with netns.entered(lab.ns("endpoint")):
                os.write(w, b"in")
                time.sleep(60)
            os._exit(0)
        os.read(r, 2)
        os.kill(pid, signal.SIGTERM)  # what pyroute2's ChildProcess.stop() sends
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        answering = sum(lab.control(h, "PING") == "PONG" for h in lab.hosts)
        present = sum(os.path.exists("/run/netns/" + n) for n in lab.namespaces)
        print("child", status, "responders", answering, len(lab.hosts),
              "namespaces", present, len(lab.namespaces), flush=True)
    print("after-lab", os.getpid(), flush=True)
"""


def test_child_forked_into_a_lab_dies_on_sigterm_and_leaves_the_lab_alone():
    r = _python(FORK_INTO_LAB_THEN_SIGTERM)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("after-lab"), \
        f"someone besides the lab's owner ran its code:\n{r.stdout}{r.stderr}"
    _, status, _, answering, hosts, _, present, namespaces = lines[0].split()
    assert int(status) == -15, "the child must die of SIGTERM, not unwind (exit 143)"
    assert answering == hosts, "the child's exit killed the parent's responders"
    assert present == namespaces, "the child's exit deleted the parent's namespaces"


RETURN_INTO_PYTEST = """
    import os
    def test_forks_and_child_returns():
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
        # the child falls through into pytest here, as an escaped child would

    def test_after():
        print("ran-in", os.getpid())
"""


def test_forked_child_that_returns_into_pytest_is_ended(tmp_path):
    (tmp_path / "test_escape.py").write_text(textwrap.dedent(RETURN_INTO_PYTEST))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "tests.conftest",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60 * load_factor())
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.count("ran-in") == 1, f"a second runner ran tests:\n{out}"
    assert out.count(" passed") == 1, f"more than one pytest summary:\n{out}"
    assert "returned into pytest; ending it" in out


COUNT_FORKS_OPENING_A_NETNS_SOCKET = """
    import os, sys
    forks = []
    os.register_at_fork(before=lambda: forks.append(1))
    from platforms.nftables.netlink import NftSocket
    s = NftSocket(sys.argv[1])
    here = os.readlink("/proc/self/ns/net")
    print(len(forks), s.portid > 0, os.readlink("/proc/thread-self/ns/net") == here)
"""


def test_backend_opens_a_namespace_socket_without_forking():
    with bare_namespace() as ns:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(COUNT_FORKS_OPENING_A_NETNS_SOCKET),
                            ns], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=60 * load_factor())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "True", "True"], \
        "opening a socket in another namespace must not fork (and must not move this thread)"


def test_missing_namespace_is_an_error_not_created():
    from platforms.nftables.netlink import NftSocket
    with pytest.raises(FileNotFoundError):
        NftSocket("cdn-no-such-namespace")
    assert not os.path.exists("/run/netns/cdn-no-such-namespace")
