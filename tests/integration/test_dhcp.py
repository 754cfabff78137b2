"""DHCP only as DHCP (DESIGN §1 "DHCP (if enabled)", issue 13), with real BOOTP-shaped
datagrams in the lab: the endpoint's client port 68 to server port 67 at the broadcast
address or the server of its lease, that server's replies (67 -> 68) and replies sent to
the broadcast address from the endpoint's link; nothing else on those ports (not to or
from a stranger, not the endpoint as a server, not a datagram that is no BOOTP message
of a DHCP size); with dhcp = false none at all.

The lab gets a "DHCP server" host (tests.harness.dhcp.DHCP_SERVER_HOST, routed like a
server behind a relay: renewals are unicast to it). The test writes the endpoint's lease
naming it (an ISC dhclient lease file the agent's config points at) before isolating.
Every datagram is first shown to arrive while normal, so each BLOCKED can fail. The
expectation is tests.harness.oracle.dhcp_allows, fed with what the test wrote (not with
anything the agent reports), and bootp_shaped reading the bytes actually sent."""
from __future__ import annotations

import pytest

from tests.harness import DEFAULT_TOPOLOGY, Lab
from tests.harness import oracle
from tests.harness.dhcp import DHCP_SERVER_HOST, KINDS, LINK, Datagram, exchange, lease_text, payload

pytestmark = pytest.mark.root

SERVER, STRANGER = DHCP_SERVER_HOST.name, "outside"


@pytest.fixture
def lab():
    with Lab(topology=DEFAULT_TOPOLOGY + (DHCP_SERVER_HOST,)) as lab:
        yield lab


def datagrams() -> list[Datagram]:
    out = []
    for peer in (SERVER, STRANGER):
        out += [Datagram("endpoint", peer, 68, 67, k) for k in KINDS]   # requests (renewals) to it
        out += [Datagram(peer, "endpoint", 67, 68, k) for k in KINDS]   # its replies / unsolicited offers
        out += [Datagram(peer, "endpoint", 68, 67, "bootp"),          # a client asking the endpoint
                Datagram("endpoint", peer, 67, 68, "bootp")]            # the endpoint answering as a server
    out += [Datagram("endpoint", "broadcast", 68, 67, k) for k in KINDS]  # discover/request broadcasts
    out += [Datagram(LINK, "broadcast", 67, 68, k) for k in KINDS]        # offers/acks to the broadcast
    out += [Datagram(LINK, "broadcast", 68, 67, "bootp"),              # someone's discover: no server here
            Datagram("endpoint", "broadcast", 67, 68, "bootp")]
    return out


def expected(lab, d: Datagram, dhcp: bool, servers: tuple) -> bool:
    """The contract for one datagram, from the harness oracle and the bytes it carries."""
    outbound = d.src == "endpoint"
    link = str(lab.hosts["endpoint"].gateway(4))
    if outbound:
        peer = oracle.BROADCAST if d.dst == "broadcast" else lab.addr(d.dst, 4)
        local = None
    else:
        peer = link if d.src == LINK else lab.addr(d.src, 4)
        local = oracle.BROADCAST if d.dst == "broadcast" else None
    sent = payload(d.kind, 1 if (d.sport, d.dport) == (68, 67) else 2, b"0123456789abcdef")
    shaped = oracle.bootp_shaped(sent, 1 if outbound else 2)
    return dhcp and oracle.dhcp_allows("out" if outbound else "in", "udp", peer, d.dport, d.sport,
                                       servers, local, shaped)


def _table(lab, got: dict, want) -> str:
    rows = [f"{'expected':9} {'observed':9} datagram"]
    for d in sorted(got):
        w = want(d)
        mark = "" if w == got[d] else "   <-- MISMATCH"
        rows.append(f"{'arrives' if w else 'blocked':9} {'arrived' if got[d] else 'lost':9} {d.label()}{mark}")
    return "\n".join(rows)


@pytest.mark.parametrize("agent_config, leased", [
    ({"dhcp": True}, True), ({"dhcp": True}, False), ({"dhcp": False}, True)],
    ids=["dhcp-leased", "dhcp-no-lease", "no-dhcp"])
def test_dhcp_passes_only_as_dhcp(lab, agent, agent_config, leased):
    dhcp = agent_config["dhcp"]
    if leased:
        with open(agent.lease_path, "w") as f:
            f.write(lease_text(lab.addr(SERVER, 4), lab.addr("endpoint", 4)))
    servers = (lab.addr(SERVER, 4),) if leased else ()
    probes = datagrams()

    before = exchange(lab, probes)
    assert all(before.values()), "not every datagram arrives while normal:\n" + _table(lab, before, lambda d: True)

    agent.isolate()
    after = exchange(lab, probes)
    want = {d: expected(lab, d, dhcp, servers) for d in probes}
    assert after == want, "DHCP while isolated:\n" + _table(lab, after, want.get)
    # a DHCP server passes only when the lease named it and DHCP is on: the oracle says so too
    assert want[Datagram("endpoint", SERVER, 68, 67, "bootp")] == (dhcp and leased)
    assert not any(want[d] for d in probes if STRANGER in (d.src, d.dst))

    st = agent.status()
    assert st["dhcp_servers"] == (list(servers) if dhcp else [])
    assert st["backend"]["enforcing"] is True

    agent.release()
    back = exchange(lab, probes)
    assert all(back.values()), "not every datagram arrives after release:\n" + _table(lab, back, lambda d: True)


@pytest.mark.parametrize("agent_config", [{"dhcp": True}], ids=["dhcp"])
def test_a_lease_written_while_isolated_changes_nothing(lab, agent, agent_config):
    """The servers are learned when isolation begins and pinned: a root user who writes
    a lease naming a stranger while isolated gets no DHCP channel to it, also not through
    a local `cordon isolate` (which more isolation always allows)."""
    agent.isolate()
    with open(agent.lease_path, "w") as f:
        f.write(lease_text(lab.addr(STRANGER, 4), lab.addr("endpoint", 4)))
    agent.isolate(strict=True)
    probes = [Datagram("endpoint", STRANGER, 68, 67, "bootp"), Datagram(STRANGER, "endpoint", 67, 68, "bootp"),
              Datagram("endpoint", "broadcast", 68, 67, "bootp")]
    got = exchange(lab, probes)
    want = {d: expected(lab, d, True, ()) for d in probes}
    assert got == want, _table(lab, got, want.get)
    assert agent.status()["dhcp_servers"] == []
