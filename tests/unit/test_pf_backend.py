"""PfBackend against the fake pfctl: the command sequences of isolate, update, strict,
release, crash-restart and tamper, the token on disk, and the state kills."""
from __future__ import annotations

import os

import pytest

from platforms.plan import Flow, Plan, PortRange
from platforms.base import BackendError, BackendUnavailable
from platforms.pf.backend import PfBackend, parse_states, anchor_point
from tests.unit.fake_pfctl import FakePfctl, FakeState
from tests.unit.test_pf_render import plan_for

from platforms.pf.render import ANCHOR as A  # noqa: E402


@pytest.fixture
def fake():
    return FakePfctl()


@pytest.fixture
def backend(fake, tmp_path):
    return PfBackend(str(tmp_path), run=fake)


def token_on_disk(tmp_path) -> str:
    return (tmp_path / "pf.token").read_text().strip()


def test_isolate_sequence(fake, backend, tmp_path):
    plan = plan_for("standard_1")
    backend.apply(plan)
    assert fake.commands() == [
        f"-a {A} -n -f -",   # validate first
        f"-a {A} -f -",      # one load
        "-sr",               # the main ruleset evaluates com.apple/*
        "-E",                # take one enable reference
        "-ss",               # nothing open that isolation does not allow
    ]
    assert fake.calls[0][1] == fake.calls[1][1] == backend.render(plan)
    assert fake.enabled and token_on_disk(tmp_path) in fake.tokens
    assert backend.read_back().enforces(plan)


def test_update_keeps_the_token_and_swaps_the_anchor_in_one_load(fake, backend, tmp_path):
    backend.apply(plan_for("standard_0"))
    token = token_on_disk(tmp_path)
    fake.calls.clear()
    new = plan_for("standard_1")
    backend.apply(new)
    loads = [c for c in fake.commands() if c.endswith("-f -")]
    assert loads == [f"-a {A} -n -f -", f"-a {A} -f -"]
    assert "-E" not in fake.commands() and token_on_disk(tmp_path) == token and list(fake.tokens) == [token]
    assert backend.read_back().enforces(new)
    assert not backend.read_back().enforces(plan_for("standard_0"))


def test_strict_drops_the_exceptions(fake, backend):
    backend.apply(plan_for("standard_1"))
    backend.apply(plan_for("strict"))
    assert backend.read_back().enforces(plan_for("strict"))
    assert fake.verdict("in", "tcp", "203.0.113.5", 50000, 3389) == "block"
    assert fake.verdict("out", "tcp", "198.51.100.10", 443, 50000) == "pass"


def test_release_flushes_only_our_anchor_and_releases_only_our_token(fake, backend, tmp_path):
    other = fake(["pfctl", "-E"]).stderr.split("Token : ")[1].strip()  # e.g. the Application Firewall
    backend.apply(plan_for("standard_1"))
    mine = token_on_disk(tmp_path)
    fake.calls.clear()
    backend.clear()
    assert fake.commands() == [f"-a {A} -F all", f"-X {mine}"]
    assert not os.path.exists(tmp_path / "pf.token")
    assert list(fake.tokens) == [other] and fake.enabled  # the other holder keeps pf on
    assert 'anchor "com.apple/*" all' in fake(["pfctl", "-sr"]).stdout.splitlines()
    assert backend.read_back().enforces(None)
    assert not any(c.startswith("-d") or c == "-F all" for c in fake.commands())


def test_release_is_idempotent_and_tolerates_a_token_lost_in_a_reboot(fake, backend, tmp_path):
    backend.apply(plan_for("standard_0"))
    rebooted = FakePfctl()  # kernel state gone, token file still on disk
    b2 = PfBackend(str(tmp_path), run=rebooted)
    b2.clear()
    assert rebooted.commands()[-1].startswith("-X ") and not (tmp_path / "pf.token").exists()
    b2.clear()
    assert rebooted.commands()[-1] == f"-a {A} -F all"


def test_release_reports_a_real_failure(fake, backend, tmp_path):
    backend.apply(plan_for("standard_0"))

    def broken(argv, stdin=None):
        if "-X" in argv:
            from platforms.pf.backend import Result
            return Result(1, "", "pfctl: /dev/pf: Permission denied\n")
        return fake(argv, stdin)
    with pytest.raises(BackendError, match="Permission denied"):
        PfBackend(str(tmp_path), run=broken).clear()
    assert (tmp_path / "pf.token").exists()


def test_crash_restart_adopts_the_token_on_disk(fake, backend, tmp_path):
    backend.apply(plan_for("standard_1"))
    token = token_on_disk(tmp_path)
    del backend  # agent killed; rules stay in the kernel
    restarted = PfBackend(str(tmp_path), run=fake)
    assert restarted.read_back().enforces(plan_for("standard_1"))
    fake.calls.clear()
    restarted.apply(plan_for("standard_1"))
    assert "-E" not in fake.commands() and list(fake.tokens) == [token]
    restarted.clear()
    assert f"-X {token}" in fake.commands() and not fake.tokens and not fake.enabled


def test_after_a_reboot_a_stale_token_is_replaced(fake, backend, tmp_path):
    backend.apply(plan_for("standard_0"))
    stale = token_on_disk(tmp_path)
    rebooted = FakePfctl()
    rebooted(["pfctl", "-E"])  # something else enabled pf at boot
    PfBackend(str(tmp_path), run=rebooted).apply(plan_for("standard_0"))
    assert "-E" in rebooted.commands() and token_on_disk(tmp_path) != stale
    assert token_on_disk(tmp_path) in rebooted.tokens


@pytest.mark.parametrize("tamper", [
    ["-a", A, "-F", "all"],   # anchor flushed
    ["-d"],                   # pf disabled (all tokens gone)
    ["-F", "all"],            # main ruleset flushed: com.apple/* no longer evaluated
])
def test_tamper_is_seen_and_reapply_restores(fake, backend, tamper):
    plan = plan_for("standard_1")
    backend.apply(plan)
    fake(["pfctl", *tamper])
    rb = backend.read_back()
    assert not rb.enforces(plan)
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "pass"  # isolation really lifted
    backend.apply(plan)
    assert backend.read_back().enforces(plan)
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "block"


def test_main_ruleset_with_a_bypass_before_our_anchor_is_replaced(fake, backend):
    plan = plan_for("standard_0")
    backend.apply(plan)
    fake(["pfctl", "-f", "-"], 'pass quick all\nanchor "com.apple/*"\n')
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "pass"
    rb = backend.read_back()
    assert not rb.enforces(plan) and not rb.details["anchor_point"]
    backend.apply(plan)
    assert "-f /etc/pf.conf" in fake.commands()
    assert fake.verdict("out", "tcp", "8.8.8.8", 443, 50000) == "block"


def test_tables_swapped_behind_our_back_are_seen(fake, backend):
    plan = plan_for("standard_1")
    backend.apply(plan)
    text = backend.render(plan).replace("203.0.113.5 }", "203.0.113.0/24 }")
    assert fake(["pfctl", "-a", A, "-f", "-"], text).rc == 0
    assert not backend.read_back().enforces(plan)


def test_rejected_anchor_changes_nothing(fake, backend, monkeypatch):
    good = plan_for("standard_0")
    backend.apply(good)
    fake.calls.clear()
    monkeypatch.setattr("platforms.pf.render.render", lambda plan: "pass out quik all\n")
    with pytest.raises(BackendError, match=r"stdin:1: syntax error"):
        backend.apply(plan_for("standard_1"))
    assert fake.commands() == [f"-a {A} -n -f -"]
    monkeypatch.undo()
    assert backend.read_back().enforces(good)


def test_open_connections_not_allowed_are_killed_and_allowed_ones_kept(fake, backend):
    fake.enabled = True
    fake.states = [
        FakeState("tcp", "out", "192.0.2.2", 50001, "198.51.100.10", 443),   # vendor: keep
        FakeState("tcp", "out", "192.0.2.2", 50002, "8.8.8.8", 443),         # stranger: kill
        FakeState("tcp", "in", "192.0.2.2", 22, "203.0.113.66", 40000),      # inbound ssh: kill
        FakeState("tcp", "in", "192.0.2.2", 3389, "203.0.113.5", 40001),     # jump host: keep
        FakeState("udp", "out", "2001:db8::2", 50003, "2001:db8::53", 53),   # IPv6: kill
        FakeState("tcp", "out", "127.0.0.1", 50004, "127.0.0.1", 8080),      # loopback: keep
        FakeState("udp", "out", "192.0.2.2", 68, "192.0.2.1", 67),           # DHCP, leased server: keep
        FakeState("udp", "out", "192.0.2.2", 68, "203.0.113.67", 67),        # DHCP-shaped, stranger: kill
    ]
    backend.apply(plan_for("standard_1"))
    left = {(s.remote, s.remote_port) for s in fake.states}
    assert left == {("198.51.100.10", 443), ("203.0.113.5", 40001), ("127.0.0.1", 8080), ("192.0.2.1", 67)}
    kills = [c for c in fake.commands() if c.startswith("-k")]
    assert kills == ["-k 192.0.2.2 -k 8.8.8.8", "-k 203.0.113.66 -k 192.0.2.2",
                     "-k 2001:db8::2 -k 2001:db8::53", "-k 192.0.2.2 -k 203.0.113.67"]


def test_a_state_that_survives_the_kills_is_an_error(fake, backend):
    fake.states = [FakeState("tcp", "out", "192.0.2.2", 50002, "8.8.8.8", 443)]

    def no_kill(argv, stdin=None):
        if "-k" in argv:
            from platforms.pf.backend import Result
            return Result(0, "", "killed 0 states from 1 sources and 1 destinations\n")
        return fake(argv, stdin)
    with pytest.raises(BackendError, match="still open"):
        PfBackend(backend.state_dir, run=no_kill).apply(plan_for("standard_0"))


def test_token_file_is_written_atomically(fake, backend, tmp_path):
    backend.apply(plan_for("standard_0"))
    assert sorted(os.listdir(tmp_path)) == ["pf.token"]
    assert token_on_disk(tmp_path).isdigit()


def test_without_a_runner_off_macos_it_is_unavailable(tmp_path):
    b = PfBackend(str(tmp_path))
    assert "block drop quick all" in b.render(plan_for("standard_0"))
    if os.uname().sysname != "Darwin":
        with pytest.raises(BackendUnavailable):
            b.apply(plan_for("standard_0"))


def test_capabilities_are_honest():
    caps = PfBackend.capabilities()
    assert caps.survives_agent_exit and caps.atomic_apply and caps.cuts_open_connections
    assert not caps.blocks_tamper_while_alive


# --------------------------------------------------------------- parsers of pfctl output

def test_parse_states_reads_macos_lines():
    text = """\
ALL tcp 192.168.1.13:57474 -> 23.205.82.58:443       ESTABLISHED:ESTABLISHED
ALL tcp 2a01:e35::b733[58505] -> 2606:4700:30::681f:4ad0[443]       ESTABLISHED:ESTABLISHED
all tcp 192.168.1.105:32400 (162.202.41.52:41952) <- 73.96.122.167:36068       ESTABLISHED:ESTABLISHED
   age 10:34:23, expires in 15:52:01, 796:814 pkts, 42419:83330 bytes, rule 3
ALL icmp 192.168.1.9:11 -> 1.1.1.1:11       0:0
"""
    states = parse_states(text)
    assert [(s.direction, s.local, s.local_port, s.remote, s.remote_port) for s in states] == [
        ("out", "192.168.1.13", 57474, "23.205.82.58", 443),
        ("out", "2a01:e35::b733", 58505, "2606:4700:30::681f:4ad0", 443),
        ("in", "192.168.1.105", 32400, "73.96.122.167", 36068),
        ("out", "192.168.1.9", 11, "1.1.1.1", 11),
    ]
    assert states[2].initiator_responder == ("73.96.122.167", "192.168.1.105")


def test_anchor_point_on_stock_and_tampered_main_rulesets():
    stock = 'scrub-anchor "com.apple/*" all fragment reassemble\nanchor "com.apple/*" all\n'
    assert anchor_point(stock)[0]
    assert anchor_point(stock + "pass quick all flags S/SA keep state\n")[0]  # after us: harmless
    assert not anchor_point("")[0]
    assert not anchor_point('pass in quick on en0 all flags S/SA keep state\nanchor "com.apple/*" all\n')[0]
    assert not anchor_point('anchor "other" all\nanchor "com.apple/*" all\n')[0]
    assert anchor_point('block drop in all\nanchor "com.apple/*" all\n')[0]


def test_icmp_and_any_flows_survive_a_round_trip(fake, backend):
    plan = Plan("standard", (Flow("out", "icmp", "203.0.113.0/24"), Flow("in", "any", "203.0.113.9/32"),
                             Flow("in", "udp", "203.0.113.9/32", (PortRange(161, 162),))), False, 9)
    backend.apply(plan)
    assert backend.read_back().enforces(plan)


# --------------------------------------------------------------- property: round trip

from hypothesis import given, settings, strategies as st  # noqa: E402

_ports = st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 50)).map(
    lambda t: PortRange(t[0], min(65535, t[0] + t[1]))), max_size=4).map(tuple)
_flow = st.builds(
    lambda d, proto, a, plen, ports: Flow(d, proto, str(__import__("ipaddress").ip_network(
        f"203.0.{a >> 8}.{a & 255}/{plen}", strict=False)), ports if proto in ("tcp", "udp") else ()),
    st.sampled_from(["out", "in"]), st.sampled_from(["tcp", "udp", "icmp", "any"]),
    st.integers(0, 65535), st.integers(8, 32), _ports)


@settings(max_examples=60, deadline=None)
@given(st.lists(_flow, max_size=12), st.booleans())
def test_any_plan_reads_back_as_itself(flows, dhcp):
    import tempfile
    plan = Plan("standard", tuple(flows), dhcp, 1)
    fake = FakePfctl()
    with tempfile.TemporaryDirectory() as d:
        b = PfBackend(d, run=fake)
        b.apply(plan)
        rb = b.read_back()
        assert rb.details["problems"] == [] and rb.enforces(plan)
