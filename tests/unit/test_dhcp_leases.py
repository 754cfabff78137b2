"""The leased DHCP servers (agent/dhcp_leases.py): read from real-format lease files of
dhclient, systemd-networkd, NetworkManager and dhcpcd; expired, foreign-interface and
non-unicast leases count for nothing; the engine learns them when isolation begins and
pins them while it lasts (issue 13)."""
from __future__ import annotations

import os
import socket
import struct

import pytest

from agent.config import parse_config
from agent.dhcp_leases import leased_servers, read_lease_file
from agent.engine import Engine
from agent.errors import InvalidInput
from agent.log import null_logger
from agent.store import AgentState, Store
from tests.unit.memory_backend import MemoryBackend

NOW = 1_800_000_000.0  # 2027-01-15
IFACES = {"eth0", "wlan0"}

DHCLIENT = """\
default-duid "\\000\\001\\000\\001";
lease {
  interface "eth0";
  fixed-address 192.0.2.10;
  option subnet-mask 255.255.255.248;
  option routers 192.0.2.9;
  option dhcp-lease-time 86400;
  option dhcp-message-type 5;
  option dhcp-server-identifier 198.51.100.7;
  option domain-name "old.example";
  renew 1 2027/01/11 10:00:00;
  rebind 1 2027/01/11 20:00:00;
  expire 2 2027/01/12 00:00:00;
}
lease {
  interface "eth0";
  fixed-address 192.0.2.10;
  option dhcp-server-identifier 192.0.2.1;
  option domain-name "braces { in } quotes";
  renew 5 2027/01/15 20:00:00;
  expire 6 2027/01/16 08:00:00;
}
lease {
  interface "eth9";
  fixed-address 203.0.113.10;
  option dhcp-server-identifier 203.0.113.1;
  expire never;
}
lease {
  interface "wlan0";
  option dhcp-server-identifier 198.51.100.66;
  expire epoch 1700000000; # long gone
}
"""


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def test_dhclient_newest_lease_per_interface_that_has_not_expired(tmp_path):
    path = write(tmp_path, "dhclient.eth0.leases", DHCLIENT)
    servers, leases = leased_servers([path], NOW, IFACES)
    # eth0's newest lease (not the older one); eth9 is not an interface of this host;
    # wlan0's lease expired
    assert servers == ("192.0.2.1",)
    assert [(x.interface, x.server) for x in leases] == [("eth0", "192.0.2.1")]
    assert leased_servers([path], NOW, IFACES | {"eth9"})[0] == ("192.0.2.1", "203.0.113.1")
    assert leased_servers([path], 1_900_000_000.0, IFACES)[0] == ()  # eth0's lease ran out


def test_networkd_and_networkmanager_key_value_leases(tmp_path):
    index = socket.if_nametoindex("lo")
    nd = tmp_path / "netif"
    nd.mkdir()
    write(nd, str(index), "# This is private data. Do not parse.\nADDRESS=192.0.2.10\n"
                          "SERVER_ADDRESS=198.51.100.67\nLIFETIME=3600\n")
    nm = write(tmp_path, "internal-4b4a6a5e-2f33-4a5d-9e37-13bd6a4c2c10-eth0.lease",
               "ADDRESS=192.0.2.11\nSERVER_ADDRESS=192.0.2.1\n")
    now = os.stat(nd / str(index)).st_mtime + 10
    servers, _ = leased_servers([str(nd / "*"), nm], now, {"lo", "eth0"})
    assert servers == ("192.0.2.1", "198.51.100.67")  # sorted by address
    assert leased_servers([str(nd / "*")], now + 3600, {"lo"})[0] == ()  # LIFETIME ran out


def _dhcp_message(server: bytes, lease_time: int) -> bytes:
    fixed = bytes([2, 1, 6, 0]) + bytes(232) + b"\x63\x82\x53\x63"
    opts = b"\x35\x01\x05" + b"\x36\x04" + server + b"\x33\x04" + struct.pack(">I", lease_time) + b"\xff"
    return fixed + opts


def test_dhcpcd_raw_lease(tmp_path):
    path = write(tmp_path, "wlan0-home.lease", _dhcp_message(socket.inet_aton("203.0.113.1"), 600))
    mtime = os.stat(path).st_mtime
    assert leased_servers([path], mtime + 1, IFACES)[0] == ("203.0.113.1",)
    assert leased_servers([path], mtime + 601, IFACES)[0] == ()


@pytest.mark.parametrize("server", ["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1", "240.0.0.1",
                                    "169.254.1.1", "010.0.0.1", "not-an-address"])
def test_a_lease_naming_no_unicast_server_counts_for_nothing(tmp_path, server):
    path = write(tmp_path, "x.leases", f'lease {{ interface "eth0"; option dhcp-server-identifier {server}; '
                                       "expire never; }\n")
    assert leased_servers([path], NOW, IFACES)[0] == ()


def test_at_most_four_servers_and_unreadable_files_are_nothing(tmp_path):
    text = "".join(f'lease {{ interface "eth{i}"; option dhcp-server-identifier 192.0.2.{i + 1}; expire never; }}\n'
                   for i in range(6))
    path = write(tmp_path, "many.leases", text)
    servers, _ = leased_servers([path], NOW, {f"eth{i}" for i in range(6)})
    assert len(servers) == 4
    assert read_lease_file(str(tmp_path / "missing")) == []
    assert leased_servers([str(tmp_path / "nothing-*")], NOW, IFACES)[0] == ()


def test_lease_files_must_be_absolute_paths():
    base = {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}]}
    with pytest.raises(InvalidInput, match="vendor.dhcp_lease_files"):
        parse_config({"vendor": {**base, "dhcp_lease_files": ["leases/dhclient.leases"]}})
    assert parse_config({"vendor": base}).vendor.dhcp_lease_files is None


def test_state_refuses_nonsense_servers():
    with pytest.raises(ValueError):
        AgentState(state="isolated", mode="strict", dhcp_servers=("0.0.0.0",))
    with pytest.raises(ValueError):
        AgentState(state="isolated", mode="strict", dhcp_servers=("192.0.2.2", "192.0.2.1"))


# --- the engine: learned when isolation begins, pinned while it lasts -------------------

def _engine(tmp_path, learned: list, dhcp: bool = True) -> Engine:
    cfg = parse_config({"state_dir": str(tmp_path), "vendor": {
        "endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}], "dhcp": dhcp}})
    e = Engine(cfg, Store(str(tmp_path)), MemoryBackend(), null_logger(), dhcp_leases=lambda: (learned[0], []))
    e.start()
    return e


def test_engine_learns_the_servers_at_isolate_and_pins_them(tmp_path):
    learned = [("192.0.2.1",)]
    e = _engine(tmp_path, learned)
    assert e.desired_plan() is None
    e.isolate("standard", None, {})
    assert e.desired_plan().dhcp_servers == ("192.0.2.1",)
    assert e.backend.applied[-1].dhcp_servers == ("192.0.2.1",)
    learned[0] = ("203.0.113.66",)  # a lease file written while isolated
    e.isolate("strict", None, {})   # a local `isolate` while isolated
    assert e.desired_plan().dhcp_servers == ("192.0.2.1",)
    assert not e.reconcile() and e.status()["dhcp_servers"] == ["192.0.2.1"]
    again = _engine(tmp_path, learned)  # a restarted agent keeps the pinned servers
    assert again.desired_plan().dhcp_servers == ("192.0.2.1",)
    again.release(None, {})
    again.isolate("standard", None, {})  # a new isolation reads the leases anew
    assert again.desired_plan().dhcp_servers == ("203.0.113.66",)


def test_engine_with_dhcp_off_learns_nothing(tmp_path):
    e = _engine(tmp_path, [("192.0.2.1",)], dhcp=False)
    e.isolate("standard", None, {})
    plan = e.desired_plan()
    assert plan.dhcp is False and plan.dhcp_servers == ()
