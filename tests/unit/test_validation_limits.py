"""Issue 14: config and policy validation holes (each a defect found on the old code)."""
import pytest

from agent.config import load_config, parse_config
from agent.errors import InvalidInput
from agent.policy import parse_json, validate_policy

MAX_VERSION = 2**53 - 1  # DESIGN: an integer; bounded to what every JSON tool holds exactly

ENDPOINT = {"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}


# Vendor endpoints the WinDivert backend cannot hold: it splits a plan over DROP handles by
# address range, so only flows on one address beyond one filter's size are too many.
ONE_ADDRESS_TOO_MANY_PORTS = ", ".join(
    f'{{ address = "198.51.100.10", protocol = "tcp", ports = "{1000 + 2 * i}" }}' for i in range(1, 60))


def fields(exc_info):
    return [e.field for e in exc_info.value.errors]


@pytest.mark.parametrize("endpoint, field", [
    ({"address": "198.51.100.10", "protocol": "icmp", "ports": "443"}, "vendor.endpoints[0].ports"),
    ({**ENDPOINT, "name": ""}, "vendor.endpoints[0].name"),
    ({**ENDPOINT, "name": "a\nb"}, "vendor.endpoints[0].name"),
    ({**ENDPOINT, "name": "x" * 65}, "vendor.endpoints[0].name"),
    ({**ENDPOINT, "name": "evil\u202etxt"}, "vendor.endpoints[0].name"),
])
def test_vendor_endpoints_follow_the_exception_rules(endpoint, field):
    with pytest.raises(InvalidInput) as info:
        parse_config({"vendor": {"endpoints": [endpoint]}})
    assert field in fields(info)


def test_windivert_limit_is_a_config_error_naming_vendor_endpoints(tmp_path):
    eps = ONE_ADDRESS_TOO_MANY_PORTS
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'backend = "windivert"\n[vendor]\nendpoints = [{eps}]\n')
    with pytest.raises(InvalidInput) as info:
        load_config(str(cfg))
    assert fields(info) == ["vendor.endpoints"] and "windivert" in str(info.value)


def test_rules_for_an_oversized_vendor_list_is_exit_2_not_a_traceback(tmp_path, capsys):
    from agent.cli import main
    eps = ONE_ADDRESS_TOO_MANY_PORTS
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[vendor]\nendpoints = [{eps}]\n')
    assert main(["rules", "--backend", "windivert", "--config", str(cfg)]) == 2
    assert "vendor.endpoints" in capsys.readouterr().err


@pytest.mark.parametrize("name", [("Télémaintenance — équipe № 1 ✓ " * 3)[:64], "日本語" * 21 + "x",
                                  "ok " * 21 + "x"])
def test_64_character_unicode_display_name_is_accepted(name):
    assert len(name) == 64
    p = validate_policy({"version": 1, "outbound": [{"name": name, "protocol": "tcp", "address": "203.0.113.5", "ports": "22"}]})
    assert p.outbound[0].name == name


@pytest.mark.parametrize("name", ["a\u0000b", "tab\there", "rl\u202eo", "iso\u2066late", "\u2069", "x" * 65, "",
                                  "bell\x07", "line\u2028sep"])
def test_display_names_reject_controls_and_bidi_overrides(name):
    with pytest.raises(InvalidInput) as info:
        validate_policy({"version": 1, "outbound": [{"name": name, "protocol": "tcp", "address": "203.0.113.5", "ports": "22"}]})
    assert fields(info) == ["outbound[0].name"]


def test_policy_version_has_an_upper_bound():
    validate_policy({"version": MAX_VERSION})
    with pytest.raises(InvalidInput) as info:
        validate_policy({"version": MAX_VERSION + 1})
    assert fields(info) == ["version"]


def test_deep_nesting_is_invalid_input_not_a_crash():
    with pytest.raises(InvalidInput):
        parse_json("[" * 5000 + "]" * 5000)
    with pytest.raises(InvalidInput):
        parse_json('{"a":' * 5000 + "1" + "}" * 5000)


def test_deep_policy_file_is_exit_2(tmp_path, capsys):
    from agent.cli import main
    f = tmp_path / "p.json"
    f.write_text('{"version": ' + "[" * 5000 + "]" * 5000 + "}")
    assert main(["policy", "validate", str(f)]) == 2
