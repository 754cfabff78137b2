"""Replay commands of the VM lab: a probe from a peer replays from the peer's namespace (the
netns tier's command); a probe from the guest is a command for the guest's control shell
that carries exactly that probe to tests/vm/inguest/probe_batch.py."""
from __future__ import annotations

import base64
import json
import shlex

from tests.harness.lab import Lab
from tests.harness.probe import Probe
from tests.harness.table import replay_command
from tests.vm.lab import GUEST_TEST_DIR, VmLab


def test_a_peer_probe_replays_from_the_peers_namespace():
    lab = VmLab(image_dir="/nonexistent")
    p = Probe("outside", "endpoint", "tcp", 443, 6, sport=53)
    argv = shlex.split(replay_command(lab, p))
    assert argv[1:] == ["-m", "tests.harness", "probe", lab.ns("outside"), lab.addr("endpoint", 6),
                        "tcp", "443", "--sport", "53"]
    assert replay_command(lab, p) == Lab.replay_command(lab, p)


def test_a_guest_probe_replays_in_the_guest_with_that_probe():
    lab = VmLab(image_dir="/nonexistent")
    p = Probe("endpoint", "rmm", "udp", 3389, 4, sport=9)
    text = replay_command(lab, p)
    where, _, cmd = text.partition(": ")
    assert where == "in the guest"
    argv = shlex.split(cmd)
    assert argv[:3] == ["cd", GUEST_TEST_DIR, "&&"]
    assert argv[3:6] == ["python3", "-m", "tests.vm.inguest.probe_batch"]
    [item] = json.loads(base64.b64decode(argv[6]))
    assert (item["addr"], item["proto"], item["port"], item["family"], item["sport"]) == \
        (lab.addr("rmm", 4), "udp", 3389, 4, 9)
