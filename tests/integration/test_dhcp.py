"""DHCP only as DHCP (DESIGN 1: "DHCP (if enabled)"): the client port 68 to server port 67
at the broadcast address or the leased server, and its replies. A DHCP-shaped packet to
or from any other host is just a UDP packet, and isolation drops it. No lab host leased
the endpoint's address, so every probe here must read BLOCKED while isolated.

The expectation is the harness's independent Model (tests/harness/expect.py)."""
from __future__ import annotations

import pytest

from tests.harness import BLOCKED, Probe
from tests.harness.expect import DHCP_CLIENT, DHCP_SERVER, Model
from tests.harness.table import Comparison

pytestmark = pytest.mark.root

PEERS = ("outside", "rmm")


def dhcp_probes() -> list[Probe]:
    probes = []
    for peer in PEERS:
        probes.append(Probe("endpoint", peer, "udp", DHCP_SERVER, 4, sport=DHCP_CLIENT))  # client asks a stranger
        probes.append(Probe(peer, "endpoint", "udp", DHCP_CLIENT, 4, sport=DHCP_SERVER))  # unsolicited "offer"
        probes.append(Probe(peer, "endpoint", "udp", DHCP_SERVER, 4, sport=DHCP_CLIENT))  # a client asks us
    return probes


def _isolated_table(lab, agent) -> Comparison:
    model = Model(agent.config)
    model.isolate()
    agent.isolate()
    probes = dhcp_probes()
    return Comparison(model.expected(lab, probes), lab.probe_all(probes), "DHCP while isolated")


def test_the_oracle_blocks_every_dhcp_shaped_probe_to_a_lab_host(lab):
    for dhcp in (True, False):
        model = Model({"vendor": {"dhcp": dhcp}})
        model.isolate()
        assert set(model.expected(lab, dhcp_probes()).values()) == {BLOCKED}
        model.dhcp_servers = (lab.addr("outside", 4),)
        leased = Probe("endpoint", "outside", "udp", DHCP_SERVER, 4, sport=DHCP_CLIENT)
        assert model.verdict(lab, leased) == ("ALLOWED" if dhcp else BLOCKED)


@pytest.mark.parametrize("agent_config", [{"dhcp": True}], ids=["dhcp"])
def test_dhcp_enabled_passes_only_dhcp(lab, agent, agent_config):
    cmp = _isolated_table(lab, agent)
    assert not cmp.mismatches, cmp.render(lab)


@pytest.mark.parametrize("agent_config", [{"dhcp": False}], ids=["no-dhcp"])
def test_dhcp_disabled_passes_no_dhcp(lab, agent, agent_config):
    cmp = _isolated_table(lab, agent)
    assert not cmp.mismatches, cmp.render(lab)
