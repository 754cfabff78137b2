"""Every address and port rule of DESIGN §1, asserted with the exact field path."""
import pytest

from agent.errors import InvalidInput
from agent.policy import validate_policy


def entry(**kw):
    return {"protocol": "tcp", "address": "203.0.113.5", "ports": "443", **kw}


def errors_of(doc):
    with pytest.raises(InvalidInput) as info:
        validate_policy(doc)
    return {e.field: e.reason for e in info.value.errors}


def single(direction="outbound", **kw):
    return {"version": 1, "enabled": True, direction: [entry(**kw)]}


@pytest.mark.parametrize("address, words", [
    ("0.0.0.0", "0.0.0.0/8"),
    ("0.0.0.0/0", "/0"),
    ("0.1.2.3", "0.0.0.0/8"),
    ("10.0.0.0/7", "/7"),
    ("128.0.0.0/1", "/1"),
    ("255.255.255.255", "broadcast"),
    ("127.0.0.1", "loopback"),
    ("127.0.0.0/8", "loopback"),
    ("224.0.0.1", "multicast"),
    ("239.1.2.3", "multicast"),
    ("240.0.0.1", "reserved"),
    ("203.0.113.5/24", "203.0.113.0/24"),      # names the network that was meant
    ("010.0.0.1", "leading zeros"),
    ("203.0.113.05", "leading zeros"),
    ("2001:db8::1", "IPv6"),
    ("::ffff:203.0.113.5", "IPv6"),
    ("rmm.example.com", "host names"),
    ("203.0.113.5 ", "whitespace"),
    ("203.0.113.5/ 24", "whitespace"),
    ("203.0.113", "IPv4"),
    ("256.0.0.1", "above 255"),
    ("203.0.113.0/33", "/33"),
    ("203.0.113.0/024", "number from 8 to 32"),
    ("", "empty"),
    (3405803781, "string"),
])
def test_rejected_addresses_name_the_field(address, words):
    for direction in ("inbound", "outbound"):
        errs = errors_of(single(direction, address=address))
        assert list(errs) == [f"{direction}[0].address"], errs
        assert words in errs[f"{direction}[0].address"]


@pytest.mark.parametrize("address, canonical", [
    ("203.0.113.5", "203.0.113.5"),
    ("203.0.113.5/32", "203.0.113.5"),
    ("203.0.113.0/24", "203.0.113.0/24"),
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("198.51.100.128/25", "198.51.100.128/25"),
])
def test_accepted_addresses_are_canonical(address, canonical):
    assert validate_policy(single(address=address)).outbound[0].address == canonical


@pytest.mark.parametrize("ports, canonical", [
    ("any", "any"), ("ANY", "any"), ("3389", "3389"),
    ("22, 3389, 5000-5010", "22,3389,5000-5010"),
    (["22", "5000-5010"], "22,5000-5010"), ([22, 3389], "22,3389"),
    ("65535", "65535"), ("1-65535", "1-65535"), ("443,22", "22,443"),
])
def test_accepted_ports(ports, canonical):
    assert validate_policy(single(ports=ports)).outbound[0].ports == canonical


@pytest.mark.parametrize("ports, words", [
    ("0", "outside 1-65535"), ("65536", "outside 1-65535"), ("5010-5000", "backwards"),
    ("22,22", "overlap"), ("20-30,25", "overlap"), ("http", "not a port"), ("", "not a port"),
    ("22;23", "not a port"), ([], "empty"), (["any"], "mixed"), (443, "must be"),
    ([True], "list items"), ("022", "leading zeros"), ("-1", "not a port"),
])
def test_rejected_ports(ports, words):
    errs = errors_of(single(ports=ports))
    assert list(errs) == ["outbound[0].ports"], errs
    assert words in errs["outbound[0].ports"]


def test_icmp_takes_only_any_ports():
    assert validate_policy(single(protocol="icmp", ports="any")).outbound[0].protocol == "icmp"
    errs = errors_of(single(protocol="icmp", ports="22"))
    assert list(errs) == ["outbound[0].ports"]


@pytest.mark.parametrize("protocol", ["TCP", "sctp", "", None, 6])
def test_rejected_protocols(protocol):
    assert list(errors_of(single(protocol=protocol))) == ["outbound[0].protocol"]
