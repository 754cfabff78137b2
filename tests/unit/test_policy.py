"""Policy document rules (DESIGN §1) other than address/ports, with exact field paths."""
import json

import pytest

from agent.errors import InvalidInput
from agent.policy import parse_json, validate_policy


def entry(i=5, **kw):
    return {"protocol": "tcp", "address": f"203.0.113.{i}", "ports": "443", **kw}


def errors_of(doc, **kw):
    with pytest.raises(InvalidInput) as info:
        validate_policy(doc, **kw)
    return {e.field: e.reason for e in info.value.errors}


def test_design_example_is_accepted():
    doc = {"version": 4, "enabled": True,
           "inbound": [{"name": "Jump host RDP", "protocol": "tcp", "address": "203.0.113.5", "ports": "3389"}],
           "outbound": [{"name": "Self-hosted RMM", "protocol": "tcp", "address": "203.0.113.20", "ports": "any", "active": True}]}
    p = validate_policy(doc)
    assert (p.version, p.enabled, len(p.inbound), len(p.outbound)) == (4, True, 1, 1)


def test_enabled_defaults_to_false_and_active_to_true():
    p = validate_policy({"version": 1, "outbound": [entry()]})
    assert p.enabled is False and p.outbound[0].active is True


def test_enabled_needs_an_exception():
    assert errors_of({"version": 1, "enabled": True}) == {
        "enabled": "a policy with enabled: true must hold at least one exception"}


def test_inactive_entries_count_as_held_but_are_not_active():
    p = validate_policy({"version": 1, "enabled": True, "outbound": [entry(active=False)]})
    assert p.active("outbound") == ()


def test_max_per_direction_from_config():
    doc = {"version": 1, "inbound": [entry(i) for i in range(1, 4)]}
    assert list(errors_of(doc, max_per_direction=2)) == ["inbound"]
    assert len(validate_policy(doc, max_per_direction=3).inbound) == 3


def test_default_limit_is_50():
    assert list(errors_of({"version": 1, "outbound": [entry(i) for i in range(1, 52)]})) == ["outbound"]
    validate_policy({"version": 1, "outbound": [entry(i) for i in range(1, 51)]})


def test_duplicates_in_one_direction_name_the_second():
    doc = {"version": 1, "outbound": [entry(), entry(7), entry(ports=["443"], name="again")]}
    assert errors_of(doc) == {"outbound[2]": "duplicate of outbound[0] (same protocol, address and ports)"}


def test_same_entry_in_both_directions_is_fine():
    validate_policy({"version": 1, "inbound": [entry()], "outbound": [entry()]})


@pytest.mark.parametrize("version", [0, -1, 1.5, "4", True, None])
def test_bad_versions(version):
    assert list(errors_of({"version": version})) == ["version"]


def test_stale_version_rejected():
    errs = errors_of({"version": 3}, stored_version=3)
    assert list(errs) == ["version"] and "stale" in errs["version"]
    assert validate_policy({"version": 4}, stored_version=3).version == 4


def test_missing_version_is_stored_plus_one():
    assert validate_policy({}, stored_version=0).version == 1
    assert validate_policy({"outbound": [entry()]}, stored_version=8).version == 9


@pytest.mark.parametrize("name, ok", [("x", True), ("a" * 64, True), ("a" * 65, False), ("", False),
                                      ("tab\there", False), ("line\nbreak", False), ("caf\u00e9", True), ("rl\u202eo", False), (7, False)])
def test_names(name, ok):
    doc = {"version": 1, "outbound": [entry(name=name)]}
    if ok:
        assert validate_policy(doc).outbound[0].name == name
    else:
        assert list(errors_of(doc)) == ["outbound[0].name"]


def test_default_name_is_readable():
    p = validate_policy({"version": 1, "inbound": [entry(ports="22,80")]})
    assert p.inbound[0].label("inbound") == "inbound tcp 203.0.113.5:22,80"


@pytest.mark.parametrize("doc, field", [
    ({"version": 1, "enable": True}, "enable"),
    ({"version": 1, "outbound": [entry(port="22")]}, "outbound[0].port"),
    ({"version": 1, "enabled": "true"}, "enabled"),
    ({"version": 1, "enabled": 1}, "enabled"),
    ({"version": 1, "outbound": {"a": 1}}, "outbound"),
    ({"version": 1, "outbound": ["x"]}, "outbound[0]"),
    ({"version": 1, "outbound": [entry(active="yes")]}, "outbound[0].active"),
    ({"version": 1, "inbound": [{"protocol": "tcp", "ports": "22"}]}, "inbound[0].address"),
])
def test_shape_errors_name_the_field(doc, field):
    assert field in errors_of(doc)


def test_errors_are_all_reported_at_once():
    doc = {"version": 1, "outbound": [entry(address="0.0.0.0"), entry(ports="0"), entry(protocol="x")]}
    assert set(errors_of(doc)) == {"outbound[0].address", "outbound[1].ports", "outbound[2].protocol"}


@pytest.mark.parametrize("text, words", [
    ('{"version": 1, "version": 2}', "more than once"),
    ("[1, 2]", "JSON object"),
    ("{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    ("NaN", "JSON object"),
])
def test_parse_json_rejects(text, words):
    with pytest.raises(InvalidInput) as info:
        parse_json(text)
    assert words in str(info.value)


def test_oversized_document_rejected():
    with pytest.raises(InvalidInput):
        parse_json(" " * (5 * 1024 * 1024))


def test_canonical_json_round_trip():
    p = validate_policy({"version": 2, "enabled": True,
                         "outbound": [entry(ports=" 443 , 22", address="203.0.113.5/32")]})
    again = validate_policy(json.loads(json.dumps(p.to_json())), stored_version=1)
    assert again == p
