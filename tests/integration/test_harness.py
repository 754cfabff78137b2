"""The harness tests itself: it must be able to fail.

A deliberately wrong ruleset, installed by the test with `nft -f` (not by Cordon), must
produce exactly the mismatches its bugs imply; a dead responder must read ERROR, never
BLOCKED; teardown must leave `ip netns list` as it was, also on failure and on signals.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.harness import ALLOWED, BLOCKED, ERROR, Lab, Probe, ProbeLoop, Session, sweep
from tests.harness.errors import HarnessError
from tests.harness.lab import REPO_ROOT
from tests.harness.matrix import BEHIND_OUT, matrix
from tests.harness.waits import scaled, wait_until
from tests.harness.netns import list_namespaces
from tests.harness.table import Comparison, junit_xml

pytestmark = pytest.mark.root

# Meant: endpoint may reach only the vendor on tcp/443 (IPv4). Bugs: an `ip` table
# (IPv6 untouched), no forward chain, and ssh open to everyone.
WRONG_RULESET = """
table ip wrong {
    chain input {
        type filter hook input priority 0; policy drop;
        iif lo accept
        ct state established,related accept
        tcp dport 22 accept
    }
    chain output {
        type filter hook output priority 0; policy drop;
        oif lo accept
        ct state established,related accept
        ip daddr 198.51.100.10 tcp dport 443 accept
    }
}
"""

PEERS = ("vendor", "outside")
SERVICES = (("tcp", 22), ("tcp", 443), ("udp", 53), ("icmp", None))


def nft(lab, host: str, ruleset: str) -> None:
    """Install a ruleset in a lab host with nft -f (the test's own rules, not Cordon's)."""
    subprocess.run(["ip", "netns", "exec", lab.ns(host), "nft", "-f", "-"], input=ruleset,
                   text=True, check=True)


def _probes() -> list[Probe]:
    return matrix(PEERS, SERVICES, forward=BEHIND_OUT)


def _meant(p: Probe) -> str:
    return ALLOWED if (p.src, p.dst, p.proto, p.port, p.family) == ("endpoint", "vendor", "tcp", 443, 4) else BLOCKED


def _wrong_ruleset_does(p: Probe) -> str:
    if p.family == 6 or p.src == "behind":
        return ALLOWED  # not filtered at all
    if p.dst == "endpoint" and p.proto == "tcp" and p.port == 22:
        return ALLOWED
    return _meant(p)


def test_wrong_ruleset_gives_exactly_the_right_mismatches(lab):
    probes = _probes()
    before = lab.probe_all(probes)
    assert {r.verdict for r in before} == {ALLOWED}, [r for r in before if r.verdict != ALLOWED]

    nft(lab, "endpoint", WRONG_RULESET)
    results = lab.probe_all(probes)
    cmp = Comparison({p: _meant(p) for p in probes}, results, "wrong ruleset")
    text = cmp.render(lab)
    print(text)

    should_differ = {p for p in probes if _wrong_ruleset_does(p) != _meant(p)}
    assert {r.probe for r in cmp.mismatches} == should_differ, text
    assert all(r.result.verdict == _wrong_ruleset_does(r.probe) for r in cmp.rows), text
    assert cmp.correct == len(probes) - len(should_differ) and cmp.incorrect == len(should_differ)
    # The blocks it did get right are real blocks, not errors.
    assert sum(r.result.verdict == BLOCKED for r in cmp.rows) == sum(
        _wrong_ruleset_does(p) == BLOCKED for p in probes)
    assert "correct: " in text and "replay: " in text and " X" in text and "*" in text
    junit = junit_xml([cmp], lab)
    assert junit.count("<failure") == len(should_differ)


def test_dead_responder_is_error_not_blocked(lab):
    lab.kill_responder("vendor")
    # With no firewall: the port is closed, the receiver cannot confirm anything.
    assert lab.probe("endpoint", "vendor", "tcp", 443).verdict == ERROR
    assert lab.probe("endpoint", "vendor", "udp", 53).verdict == ERROR
    # Behind a firewall that drops everything: still ERROR, because the receiver cannot
    # be shown to have seen nothing while alive.
    nft(lab, "endpoint", "table inet t { chain o { type filter hook output priority 0; policy drop; }\n}")
    for proto, port in SERVICES:
        for fam in (4, 6):
            r = lab.probe("endpoint", "vendor", proto, port, fam)
            assert r.verdict == ERROR, r
    # A live receiver behind the same firewall is a real BLOCKED.
    assert lab.probe("endpoint", "outside", "tcp", 443).verdict == BLOCKED


def test_receiver_that_sees_the_nonce_but_cannot_answer_is_error(lab):
    # Drop only the replies leaving the vendor: the request arrived, so this is not BLOCKED.
    nft(lab, "vendor", "table inet t { chain o { type filter hook output priority 0; "
                         "ip daddr 192.0.2.10 udp sport 53 drop; }\n}")
    r = lab.probe("endpoint", "vendor", "udp", 53)
    assert r.verdict == ERROR and "got the nonce" in r.detail, r


def test_probe_loop_sees_a_leak_and_a_loss(lab):
    allowed = Probe("endpoint", "vendor", "tcp", 443, 4)
    must_block = Probe("endpoint", "outside", "udp", 53, 4)
    with ProbeLoop(lab, must_pass=[allowed], must_block=[must_block], interval=0.05) as loop:
        loop.wait_rounds(5)
        nft(lab, "endpoint", "table ip t { chain o { type filter hook output priority 0; "
                                         "tcp dport 443 drop; }\n}")
        loop.wait_rounds(15)
    rep = loop.report
    assert rep.rounds >= 5
    assert rep.leaks and all(p == must_block for _, p, _ in rep.leaks)  # nothing blocks it: leaks
    assert rep.losses and all(p == allowed for _, p, _ in rep.losses)


SLOW_ECHO = textwrap.dedent("""
    import asyncio, sys

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, peer):
            asyncio.get_running_loop().call_later(0.3, self.transport.sendto, data, peer)

    async def main():
        await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=("0.0.0.0", int(sys.argv[1])))
        await asyncio.Event().wait()
    asyncio.run(main())
""")


def test_probe_loop_tells_exchanges_crossing_the_first_rule_from_losses(lab):
    """The kernel starts tracking connections in a namespace with its first ruleset that
    uses conntrack: a UDP request sent before it gets a reply with no state (`ct state
    new` from the peer). Shown here with an echo that answers 0.3 s late, so exchanges
    are in flight when the first rule comes: those are `crossed`, exchanges sent after
    it pass, and a later drop of the flow is a loss again."""
    port = 5999
    echo = lab.spawn("vendor", sys.executable, "-c", SLOW_ECHO, str(port))
    flow = Probe("endpoint", "vendor", "udp", port, 4)
    try:
        wait_until(lambda: lab.probe("endpoint", "vendor", "udp", port).verdict == ALLOWED, 10, "the slow echo answers")
        with ProbeLoop(lab, must_pass=[flow], interval=0.05, timeout=1.0, first_rule_in="endpoint") as loop:
            loop.wait_rounds(10)
            nft(lab, "endpoint", "table inet t { chain i { type filter hook input priority 0; "
                                 f"udp sport {port} ct state new drop; }}\n}}")
            loop.wait_rounds(40)
            dropped_at = loop.elapsed()
            nft(lab, "endpoint", "table ip t2 { chain o { type filter hook output priority 0; "
                                 f"udp dport {port} drop; }}\n}}")
            loop.wait_rounds(20)
    finally:
        echo.kill()
        echo.wait()
    rep = loop.report
    assert rep.first_rule is not None and 0 < rep.first_rule < dropped_at, rep.summary()
    assert rep.crossed, rep.summary()  # the kernel fact this classification rests on
    assert all(t > rep.first_rule for t, _, _ in rep.crossed), rep.summary()
    assert rep.losses and all(t > dropped_at for t, _, _ in rep.losses), rep.summary()


def test_probe_loop_refuses_a_namespace_that_has_a_table_already(lab):
    nft(lab, "endpoint", "table inet t { chain i { type filter hook input priority 0; }\n}")
    with pytest.raises(HarnessError, match="already has nftables tables"):
        ProbeLoop(lab, must_pass=[Probe("endpoint", "vendor", "tcp", 443, 4)],
                  first_rule_in="endpoint").start()


def test_probe_loop_is_not_clean_when_a_receiver_cannot_answer(lab):
    """A blocked flow whose receiver cannot say whether the nonce arrived is no verdict:
    the loop must not read as clean on silence."""
    lab.kill_responder("outside")
    must_block = Probe("endpoint", "outside", "tcp", 443, 4)
    with ProbeLoop(lab, must_block=[must_block], interval=0.05) as loop:
        loop.wait_rounds(5)
    rep = loop.report
    assert not rep.clean and not rep.leaks and rep.unknown, rep.summary()
    assert all(p == must_block for _, p, _ in rep.unknown)


def test_open_session_is_cut_by_a_later_ruleset(lab):
    with Session(lab, "endpoint", "outside", "tcp", 443) as s:
        assert s.exchange()
        nft(lab, "endpoint", "table inet t { chain o { type filter hook output priority 0; "
                                         "policy drop; }\n}")
        assert not s.exchange(timeout=0.5)


def test_source_port_probe(lab):
    # The sender's own responder listens on 443 too; the probe must still go out.
    for proto in ("tcp", "udp"):
        for fam in (4, 6):
            r = lab.probe("outside", "endpoint", proto, 22, fam, sport=443)
            assert r.verdict == ALLOWED, r
    # A block on source port 443 is seen as such.
    nft(lab, "endpoint", "table inet t { chain i { type filter hook input priority 0; "
                         "tcp sport 443 drop; }\n}")
    assert lab.probe("outside", "endpoint", "tcp", 22, sport=443).verdict == BLOCKED
    assert lab.probe("outside", "endpoint", "tcp", 22).verdict == ALLOWED


def _ours(runid: str) -> list[str]:
    # Other engineers' tests may add or remove their own namespaces meanwhile: only
    # this run's are ours to check.
    return [n for n in list_namespaces() if n.startswith(f"cdn-{runid}-")]


def test_teardown_on_failure_leaves_namespaces_as_before():
    before = list_namespaces()
    with pytest.raises(ZeroDivisionError):
        with Lab() as lab:
            assert len(_ours(lab.runid)) == len(lab.hosts) + 1
            1 / 0
    assert _ours(lab.runid) == []
    # Other people's labs come and go meanwhile: only this run's are ours to check.
    assert not [n for n in set(list_namespaces()) - set(before) if n.startswith(f"cdn-{lab.runid}-")]


HOLD = textwrap.dedent("""
    import signal, sys, time
    from tests.harness import Lab
    if sys.argv[1:] == ["sigint-ignored"]:  # as inherited by a runner started in the background
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with Lab() as lab:
        print(lab.runid, flush=True)
        time.sleep(600)
""")


@contextlib.contextmanager
def _held_lab(*args: str):
    """A lab held by another process; if the test fails before that process ends, it is
    killed and its namespaces swept, so a failing test leaves nothing behind either."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                         text=True)
    try:
        runid = p.stdout.readline().strip()
        assert runid, "lab did not start"
        assert any(n.startswith(f"cdn-{runid}-") for n in list_namespaces())
        yield p, runid
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            sweep(say=lambda _: None)
        p.stdout.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("inherited", ["sigint-default", "sigint-ignored"])
def test_signal_tears_down(sig, inherited):
    """Ctrl-C, SIGTERM and SIGHUP tear the lab down, whatever SIGINT disposition the
    process inherited (a background CI job inherits SIGINT ignored: the lab's trap must
    not depend on it). The wait is a guard against a hang, scaled with the load."""
    with _held_lab(inherited) as (p, runid):
        p.send_signal(sig)
        assert p.wait(timeout=scaled(60)) in (-sig, 128 + sig)
    assert _ours(runid) == []


def test_sweep_removes_leftovers_of_a_killed_run():
    with _held_lab() as (p, runid):
        p.kill()
        p.wait()
    left = _ours(runid)
    assert left, "SIGKILL should leave the namespaces behind"
    removed = sweep(say=lambda _: None)
    assert set(left) <= set(removed)
    assert _ours(runid) == []
