import pytest

from agent.config import DEFAULT_PATH, config_path, load_config, parse_config
from agent.errors import InvalidInput

VENDOR = {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}


def errors_of(doc):
    with pytest.raises(InvalidInput) as info:
        parse_config(doc)
    return {e.field: e.reason for e in info.value.errors}


def test_shipped_example_loads(examples):
    c = load_config(str(examples / "agent.toml"))
    assert c.sensor_type == "endpoint_sensor" and c.vendor.endpoints[0].ports == "443"
    assert c.exceptions.max_per_direction == 50 and c.vendor.dhcp is True


def test_defaults():
    c = parse_config({"vendor": VENDOR})
    assert (c.sensor_type, c.backend, c.state_dir, c.control_socket) == (
        "endpoint_sensor", "auto", "/var/lib/cordon", "/run/cordon/control.sock")
    assert c.vendor.dns_servers == ()


@pytest.mark.parametrize("doc, field", [
    ({"vendor": VENDOR, "sensortype": "x"}, "sensortype"),
    ({"vendor": {**VENDOR, "dhcpp": True}}, "vendor.dhcpp"),
    ({"vendor": VENDOR, "exceptions": {"max": 3}}, "exceptions.max"),
    ({"vendor": VENDOR, "sensor_type": "edr"}, "sensor_type"),
    ({"vendor": VENDOR, "backend": "iptables"}, "backend"),
    ({"vendor": VENDOR, "state_dir": "relative/dir"}, "state_dir"),
    ({"vendor": VENDOR, "control_socket": ""}, "control_socket"),
    ({"vendor": {"endpoints": []}}, "vendor.endpoints"),
    ({}, "vendor"),
    ({"vendor": {"endpoints": [{"address": "0.0.0.0/0", "protocol": "tcp", "ports": "443"}]}}, "vendor.endpoints[0].address"),
    ({"vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "99999"}]}}, "vendor.endpoints[0].ports"),
    ({"vendor": {**VENDOR, "dns_servers": ["198.51.100.0/24"]}}, "vendor.dns_servers[0]"),
    ({"vendor": {**VENDOR, "dns_servers": ["dns.example"]}}, "vendor.dns_servers[0]"),
    ({"vendor": {**VENDOR, "dhcp": "yes"}}, "vendor.dhcp"),
    ({"vendor": VENDOR, "exceptions": {"max_per_direction": 0}}, "exceptions.max_per_direction"),
    ({"vendor": VENDOR, "exceptions": {"max_per_direction": 10001}}, "exceptions.max_per_direction"),
])
def test_config_errors_name_the_field(doc, field):
    assert field in errors_of(doc)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("sensor_type = \n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(str(bad))


def test_config_path_precedence(monkeypatch):
    monkeypatch.delenv("CORDON_CONFIG", raising=False)
    assert config_path(None) == DEFAULT_PATH
    monkeypatch.setenv("CORDON_CONFIG", "/env.toml")
    assert config_path(None) == "/env.toml"
    assert config_path("/cli.toml") == "/cli.toml"
