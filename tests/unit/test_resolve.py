"""agent/resolve.py against a real DNS server (tests/harness/dnsserver.py, dnspython) on
loopback: what a name allows is computed from what the server was told to answer."""
import os

import pytest

from agent import resolve as r
from tests.harness.dnsserver import serve, write_zone

NAME = "rmm.example.com"


@pytest.fixture
def dns(tmp_path):
    path = str(tmp_path / "zone.json")
    write_zone(path, {})
    udp, tcp = serve(path, "127.0.0.1", 0)

    def ask(zone, name=NAME, min_ttl=30):
        write_zone(path, zone)
        os.utime(path, ns=(os.stat(path).st_mtime_ns + 1,) * 2)  # a new stamp even within one tick
        return r.resolve(name, ("127.0.0.1",), min_ttl, port=udp.server_address[1])
    yield ask
    for s in (udp, tcp):
        s.shutdown()
        s.server_close()


def test_addresses_and_expiry(dns):
    got = dns({NAME: {"a": ["203.0.113.20", "203.0.113.5"], "ttl": 120}}, name="RMM.example.com")
    assert got.error is None and set(got.addresses) == {"203.0.113.20", "203.0.113.5"}
    assert got.ttl == 120 and got.expires is not None


@pytest.mark.parametrize("ttl, clamped, min_ttl", [(1, 30, 30), (99999, 3600, 30), (2, 2, 2), (0, 1, 1)])
def test_ttl_is_clamped(dns, ttl, clamped, min_ttl):
    assert dns({NAME: {"a": ["203.0.113.20"], "ttl": ttl}}, min_ttl=min_ttl).ttl == clamped


@pytest.mark.parametrize("entry, why", [({"rcode": "NXDOMAIN"}, "NXDOMAIN"), ({"rcode": "SERVFAIL"}, "SERVFAIL"),
                                        ({"rcode": "REFUSED"}, "refused"), ({"ttl": 5}, "no A records")])
def test_failures_allow_nothing(dns, entry, why):
    got = dns({NAME: entry})
    assert got.addresses == () and why in got.error and got.expires is None


def test_timeout_allows_nothing(dns, monkeypatch):
    monkeypatch.setattr(r, "LIFETIME_S", 0.5)
    monkeypatch.setattr(r, "QUERY_TIMEOUT_S", 0.2)
    got = dns({NAME: {"drop": True}})
    assert got.addresses == () and "timeout" in got.error


def test_a_thousand_records_give_at_most_sixteen(dns):
    unique = [f"{n}.{i}" for n in ("203.0.113", "198.51.100", "192.0.2") for i in range(1, 255)]
    served = (unique * 2)[:1000]
    got = dns({NAME: {"records": served, "ttl": 60}})  # too big for UDP: truncated, asked again over TCP
    assert len(got.addresses) == r.MAX_ADDRESSES and set(got.addresses) <= set(served)


def test_unusable_addresses_are_never_peers(dns):
    got = dns({NAME: {"a": ["127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "203.0.113.7"]}})
    assert got.addresses == ("203.0.113.7",)
    assert dns({NAME: {"a": ["127.0.0.1"]}}).error.startswith("no usable")


def test_no_resolvers_no_query():
    assert r.resolve(NAME, ()).error


def test_host_table_refresh_times():
    from platforms.plan import HostAddresses
    clock = [1000.0]
    answers = {"a.example.com": HostAddresses("a.example.com", ("203.0.113.1",), 1040.0, None, 40),
               "b.example.com": HostAddresses("b.example.com", error="NXDOMAIN")}
    table = r.HostTable(("192.0.2.53",), min_ttl=10, resolver=lambda h, s, m: answers[h], now=lambda: clock[0])
    table.update(["a.example.com", "b.example.com"])
    assert table.refresh_at() == 1010.0                       # the failed name, after the shortest TTL
    assert table.due(1010.0) == ["b.example.com"]
    assert table.due(1030.0) == ["a.example.com", "b.example.com"]   # 75 % of the TTL
    table.update(["a.example.com"], only=())                  # a name dropped from the policy is forgotten
    assert list(table.current()) == ["a.example.com"]
