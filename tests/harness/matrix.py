"""The ONE probe-matrix builder: which flows a test tries, as harness Probes. The verdict
for each comes from tests.harness.oracle, never from here.

    matrix(("vendor", "outside"), (("tcp", 443), ("icmp", None)),
           forward=(("behind", "outside", "tcp", 443),), extra=[Probe(...)])

Peers are lab host names, or plain addresses where no lab runs (the pf unit tests: then
`lab.addr` is not needed and `Probe.src/dst` hold the address). Used by
tests.harness.expect.probe_set (the story and the demo), the nftables and WinDivert
matrices, the harness self-test and the pf unit tests."""
from __future__ import annotations

from .probe import Probe

ENDPOINT = "endpoint"
# The forward path in its plainest form: the host behind the endpoint opens a flow out.
BEHIND_OUT = (("behind", "outside", "tcp", 443), ("behind", "outside", "icmp", None))


def both_ways(peer: str, proto: str, port: int | None, family: int, sport: int | None = None) -> list[Probe]:
    """The endpoint opening a flow to `peer`, and `peer` opening the same to the endpoint.
    `sport`: the opener's source port (never for icmp)."""
    sport = None if proto == "icmp" else sport
    return [Probe(ENDPOINT, peer, proto, port, family, sport), Probe(peer, ENDPOINT, proto, port, family, sport)]


def matrix(peers, services, families=(4, 6), sport: int | None = None, forward=(), extra=()) -> list[Probe]:
    """For each family: every peer x (proto, port) service both ways (`both_ways`), then
    the `forward` flows (src, dst, proto, port) that cross the endpoint as a router; then
    the `extra` probes. Each probe once, in that order."""
    probes = []
    for fam in families:
        for peer in peers:
            for proto, port in services:
                probes += both_ways(peer, proto, port, fam, sport)
        probes += [Probe(src, dst, proto, port, fam) for src, dst, proto, port in forward]
    return list(dict.fromkeys([*probes, *extra]))
