"""Host exceptions and expires_at in the policy (DESIGN §11), with exact field paths."""
import datetime

import pytest

from agent.config import Config
from agent.compile import compile_plan
from agent.errors import InvalidInput
from agent.policy import validate_policy
from platforms.plan import HostAddresses

NOW = datetime.datetime(2026, 12, 2, 14, 0, tzinfo=datetime.timezone.utc).timestamp()


def host(name="rmm.example.com", **kw):
    return {"protocol": "tcp", "host": name, "ports": "443", **kw}


def errors_of(doc, **kw):
    with pytest.raises(InvalidInput) as info:
        validate_policy(doc, **kw)
    return {e.field: e.reason for e in info.value.errors}


def test_host_is_canonical_lower_case_without_trailing_dot():
    p = validate_policy({"version": 1, "outbound": [host("RMM.Example.COM.")]})
    assert p.outbound[0].host == "rmm.example.com" and p.outbound[0].address is None
    assert validate_policy(p.to_json()) == p


@pytest.mark.parametrize("name, why", [
    ("*.example.com", "wildcards"),
    ("rmm", "fully qualified"),
    ("a..example.com", "empty"),
    ("-rmm.example.com", "hyphen"),
    ("rmm_1.example.com", "hyphen"),
    ("x" * 64 + ".example.com", "63"),
    (".".join(["abcdefgh"] * 29) + ".com", "253"),
    ("203.0.113.5", "address"),
    ("rmm.exämple.com", "ASCII"),
    ("rmm .example.com", "whitespace"),
    ("", "empty"),
])
def test_bad_names_name_the_host_field(name, why):
    errors = errors_of({"version": 1, "outbound": [host(name)]})
    assert list(errors) == ["outbound[0].host"] and why in errors["outbound[0].host"]


def test_a_name_of_253_characters_is_accepted():
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert validate_policy({"version": 1, "outbound": [host(name)]}).outbound[0].host == name


def test_exactly_one_of_address_and_host():
    assert list(errors_of({"version": 1, "outbound": [{"protocol": "tcp", "ports": "443"}]})) == ["outbound[0].address"]
    both = {**host(), "address": "203.0.113.5"}
    errors = errors_of({"version": 1, "inbound": [both]})
    assert list(errors) == ["inbound[0].host"] and "both" in errors["inbound[0].host"]


def test_host_needs_dns_servers_when_the_config_is_known():
    doc = {"version": 1, "outbound": [{"protocol": "tcp", "address": "203.0.113.5", "ports": "22"}, host()]}
    assert list(errors_of(doc, dns_servers=())) == ["outbound[1].host"]
    validate_policy(doc, dns_servers=("192.0.2.53",))
    validate_policy(doc)  # no config named: nothing to check against


def test_same_host_twice_is_a_duplicate_but_not_of_an_address():
    doc = {"version": 1, "outbound": [host(), host("RMM.example.com")]}
    assert list(errors_of(doc)) == ["outbound[1]"]


@pytest.mark.parametrize("text, canonical", [
    ("2026-12-02T15:00:00Z", "2026-12-02T15:00:00Z"),
    ("2026-12-02t15:00:00.5z", "2026-12-02T15:00:00.500000Z"),
    ("2026-12-02T15:00:00+00:00", "2026-12-02T15:00:00Z"),
])
def test_expires_at_is_rfc3339_utc(text, canonical):
    p = validate_policy({"version": 1, "outbound": [host(expires_at=text)]}, now=NOW)
    assert p.outbound[0].expires_at == canonical


@pytest.mark.parametrize("text", ["2026-12-02 15:00:00Z", "2026-12-02T15:00:00+01:00", "2026-12-02T15:00:00",
                                  "2026-02-30T15:00:00Z", "tomorrow", 1764687600])
def test_bad_expires_at_names_the_field(text):
    assert list(errors_of({"version": 1, "inbound": [host(expires_at=text)]})) == ["inbound[0].expires_at"]


def test_expires_at_in_the_past_is_rejected_only_with_a_clock():
    doc = {"version": 1, "outbound": [host(expires_at="2026-12-02T13:59:59Z")]}
    errors = errors_of(doc, now=NOW)
    assert list(errors) == ["outbound[0].expires_at"] and "past" in errors["outbound[0].expires_at"]
    validate_policy(doc)  # a stored policy read back later is not re-judged by the clock


CONFIG = Config.model_validate({"vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}],
                                           "dns_servers": ["192.0.2.53"]}})


def test_compile_host_addresses_with_their_expiry():
    policy = validate_policy({"version": 1, "enabled": True, "outbound": [host(expires_at="2026-12-02T14:00:10Z")],
                              "inbound": [host(protocol="any", ports="any")]})
    answer = HostAddresses("rmm.example.com", ("203.0.113.7", "203.0.113.8"), NOW + 30, None, 30)
    plan = compile_plan(CONFIG, policy, "standard", {"rmm.example.com": answer}, now=NOW)
    ex = plan.by_origin("exception")
    assert {(f.direction, f.network, f.expires) for f in ex} == {
        ("out", "203.0.113.7/32", NOW + 10), ("out", "203.0.113.8/32", NOW + 10),   # expires_at first
        ("in", "203.0.113.7/32", NOW + 30), ("in", "203.0.113.8/32", NOW + 30)}     # the TTL first
    assert all(f.host == "rmm.example.com" for f in ex)
    assert plan.hosts == (answer,)


def test_a_name_that_did_not_resolve_allows_nothing():
    policy = validate_policy({"version": 1, "enabled": True, "outbound": [host()]})
    failed = HostAddresses("rmm.example.com", error="NXDOMAIN")
    for hosts in ({}, {"rmm.example.com": failed}):
        plan = compile_plan(CONFIG, policy, "standard", hosts, now=NOW)
        assert plan.by_origin("exception") == ()
        assert [h.host for h in plan.hosts] == ["rmm.example.com"] and plan.hosts[0].error


def test_expired_exception_is_left_out_at_its_time():
    policy = validate_policy({"version": 1, "enabled": True,
                              "outbound": [{"protocol": "tcp", "address": "203.0.113.5", "ports": "22",
                                            "expires_at": "2026-12-02T14:00:00Z"}]})
    before = compile_plan(CONFIG, policy, "standard", now=NOW - 0.001)
    assert [f.expires for f in before.by_origin("exception")] == [NOW]
    assert compile_plan(CONFIG, policy, "standard", now=NOW).by_origin("exception") == ()
    assert before.lapsed(NOW).digest() == compile_plan(CONFIG, policy, "strict").digest()


def test_equal_flows_keep_the_longest_expiry():
    policy = validate_policy({"version": 1, "enabled": True, "outbound": [
        {"name": "x", "protocol": "tcp", "address": "203.0.113.5", "ports": "22", "expires_at": "2026-12-02T14:00:05Z"},
        {"name": "x", "protocol": "any", "address": "203.0.113.5", "ports": "22", "expires_at": "2026-12-02T14:00:09Z"}]})
    flows = compile_plan(CONFIG, policy, "standard", now=NOW).by_origin("exception")
    assert [(f.protocol, f.expires) for f in flows] == [("tcp", NOW + 9), ("udp", NOW + 9)]
