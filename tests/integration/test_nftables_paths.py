"""DESIGN §6 paths below the inet table, with real frames: each is first shown OPEN while
normal (so the test can fail), then closed while isolated, with the receiver shown alive
right after and the vendor still reachable."""
from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import time

import pytest

from tests.harness import ALLOWED, netns
from tests.integration.nft_fixtures import nft_backend  # noqa: F401  (fixture)
from tests.integration.nft_plans import plan_a

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")]

SOL_PACKET, PACKET_QDISC_BYPASS = 263, 20
ETH_P_ALL, ETH_P_EXPERIMENTAL = 0x0003, 0x88B5


def _mac(lab, host_ns: str, dev: str) -> bytes:
    out = netns.ip("-j", "link", "show", dev, ns=host_ns)
    import json
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def _udp_frame(dst_mac, src_mac, src_ip, dst_ip, payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", 40000, 9, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    csum = sum(struct.unpack(">10H", ip))
    csum = (csum & 0xFFFF) + (csum >> 16)
    ip = ip[:10] + struct.pack(">H", ~csum & 0xFFFF) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def _seen(sniffer: socket.socket, nonce: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sniffer.settimeout(left)
        try:
            if nonce in sniffer.recv(65535):
                return True
        except socket.timeout:
            return False
    return False


def _raw_send(lab, bypass: bool, kinds) -> dict:
    """Send each kind of raw frame from the endpoint's eth0; {kind: seen by the router}."""
    r_ns, e_ns = lab.ns("router"), lab.ns("endpoint")
    router_mac, ep_mac = _mac(lab, r_ns, "to-endpoint"), _mac(lab, e_ns, "eth0")
    sniffer = netns.socket_in(r_ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sniffer.bind(("to-endpoint", 0))
    sender = netns.socket_in(e_ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if bypass:
            sender.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sender.bind(("eth0", 0))
        seen = {}
        for kind in kinds:
            nonce = secrets.token_bytes(16)
            if kind == "ethertype":
                frame = router_mac + ep_mac + struct.pack(">H", ETH_P_EXPERIMENTAL) + nonce + bytes(30)
            else:  # an IPv4/UDP datagram to the outside host, built by hand
                frame = _udp_frame(router_mac, ep_mac, lab.addr("endpoint", 4), lab.addr("outside", 4), nonce)
            try:
                sender.send(frame)
            except OSError:
                pass  # ENOBUFS from a drop at egress: the peer must still see nothing
            seen[kind] = _seen(sniffer, nonce, 1.0)
        # The receiver is alive: a frame the router itself sends on the same link is seen.
        alive = secrets.token_bytes(16)
        out = netns.socket_in(r_ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        out.bind(("to-endpoint", 0))
        out.send(ep_mac + router_mac + struct.pack(">H", ETH_P_EXPERIMENTAL) + alive + bytes(30))
        out.close()
        seen["receiver alive"] = _seen(sniffer, alive, 2.0)
        return seen
    finally:
        sender.close()
        sniffer.close()


@pytest.mark.parametrize("bypass", [False, True], ids=["qdisc", "qdisc-bypass"])
def test_raw_af_packet_frames_do_not_leave_while_isolated(lab, nft_backend, bypass):  # noqa: F811
    kinds = ("ethertype", "ipv4-udp")
    assert _raw_send(lab, bypass, kinds) == {k: True for k in (*kinds, "receiver alive")}, \
        "raw frames must arrive while normal, or this test proves nothing"
    nft_backend.apply(plan_a())
    assert _raw_send(lab, bypass, kinds) == {"ethertype": False, "ipv4-udp": False, "receiver alive": True}
    assert lab.probe("endpoint", "vendor", "tcp", 443).verdict == ALLOWED
    nft_backend.clear()
    assert _raw_send(lab, bypass, kinds)["ipv4-udp"], "release restores the raw path"


def _container(lab, kind: str, name: str):
    """A 'container' namespace with a macvlan/ipvlan child of the endpoint's eth0."""
    ns = f"{lab.ns('endpoint')}-{name}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    lab.namespaces.append(ns)  # removed at teardown with the lab's own
    link = ["type", "macvlan", "mode", "bridge"] if kind == "macvlan" else ["type", "ipvlan", "mode", "l2"]
    try:
        netns.ip("link", "add", "link", "eth0", "name", name, *link, ns=lab.ns("endpoint"))
    except RuntimeError as exc:
        if "Unknown device type" in str(exc):  # a kernel fact, not a missing tool: the path
            # cannot exist on this host (these machines' kernel is built without ipvlan)
            pytest.skip(f"this kernel has no {kind} driver, so this path does not exist here: {exc}")
        raise
    netns.ip("link", "set", name, "netns", ns, ns=lab.ns("endpoint"))
    gw = lab.hosts["endpoint"].gateway(4)
    netns.ip("-batch", "-", ns=ns, input=f"addr add 192.0.2.11/29 dev {name}\nlink set {name} up\n"
                                          f"link set lo up\nroute add default via {gw}\n")
    return ns


def _ping(ns: str, addr: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", "2", "-W", "1", addr],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["macvlan", "ipvlan"])
def test_container_on_the_nic_is_cut_off_while_isolated(lab, nft_backend, kind):  # noqa: F811
    ns = _container(lab, kind, f"c{kind[:3]}")
    outside = lab.addr("outside", 4)
    assert _ping(ns, outside), f"the {kind} container must reach outside while normal"
    nft_backend.apply(plan_a())
    assert not _ping(ns, outside)
    assert _ping(lab.ns("router"), outside), "outside host alive"
    assert lab.probe("endpoint", "vendor", "tcp", 443).verdict == ALLOWED
    nft_backend.clear()
    assert _ping(ns, outside)


def _nft(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True)



def _named_then_repaired(lab, nft_backend, problem: str) -> None:
    """The tamper is read back (named, not enforcing); apply repairs it (what the engine's
    reconcile does, logging tamper_detected) and the raw path is closed again."""
    seen = nft_backend.read_back()
    assert problem in seen.details["problems"]
    assert not seen.enforces(plan_a())
    nft_backend.apply(plan_a())
    assert nft_backend.read_back().enforces(plan_a())
    assert _raw_send(lab, False, ("ipv4-udp",)) == {"ipv4-udp": False, "receiver alive": True}

def test_dormant_netdev_table_is_refused_while_owned_and_repaired_when_not(lab, nft_backend, tmp_path):  # noqa: F811
    from platforms.nftables import NftablesBackend
    e_ns = lab.ns("endpoint")
    nft_backend.apply(plan_a())
    rb = nft_backend.read_back()
    assert rb.details["problems"] == [] and rb.details["limits"] == []
    if rb.details["tamper"] == "blocked":  # owner|persist: no other process may unhook it
        assert _nft(e_ns, "add table netdev cordon { flags dormant; }").returncode != 0
        nft_backend.close()  # orphaned: persist still refuses the flag change
        assert _nft(e_ns, "add table netdev cordon { flags dormant; }").returncode != 0
        nft_backend = NftablesBackend(netns=e_ns)
    # A table without persist (Linux < 6.9, simulated by nft -f of the same ruleset).
    path = tmp_path / "cordon.nft"
    path.write_text(nft_backend.render(plan_a()))
    nft_backend.clear()
    assert _nft(e_ns, "-f", str(path)).returncode == 0
    assert _raw_send(lab, False, ("ipv4-udp",)) == {"ipv4-udp": False, "receiver alive": True}
    assert _nft(e_ns, "add table netdev cordon { flags dormant; }").returncode == 0
    assert _raw_send(lab, False, ("ipv4-udp",))["ipv4-udp"], "a dormant netdev table unhooks it"
    try:
        _named_then_repaired(lab, nft_backend, "table netdev cordon is dormant (unhooked)")
    finally:
        nft_backend.clear()
        nft_backend.close()


def test_a_device_added_while_isolated_is_seen_and_hooked(lab, nft_backend):  # noqa: F811
    e_ns = lab.ns("endpoint")
    nft_backend.apply(plan_a())
    nft_backend.wait_for_change(0.01)  # subscribe before the device appears
    netns.ip("link", "add", "late0", "type", "veth", "peer", "name", "late1", ns=e_ns)
    netns.ip("tuntap", "add", "dev", "tap9", "mode", "tap", ns=e_ns)
    assert nft_backend.wait_for_change(10.0), "rtnetlink must report the new devices"
    seen = nft_backend.read_back()
    assert {f"netdev chain {h}_{d} is missing" for h in ("ingress", "egress")
            for d in ("late0", "late1", "tap9")} <= set(seen.details["problems"])
    assert not seen.enforces(plan_a())
    nft_backend.apply(plan_a())
    after = nft_backend.read_back()
    assert after.enforces(plan_a())
    assert {"late0", "late1", "tap9"} <= set(after.details["netdev"]["devices"])
    listed = _nft(e_ns, "list table netdev cordon").stdout
    assert 'hook egress device "tap9"' in listed and 'hook ingress device "late0"' in listed


@pytest.mark.parametrize("target", ["out_l4", "out_l4_hot"])
def test_netdev_set_elements_are_read_back_and_a_tampered_set_repaired(lab, nft_backend, tmp_path, target):  # noqa: F811
    """An element added to a netdev set by root (outside's udp/9, the raw frame's flow)
    opens the raw path below an intact inet table: read-back names it, apply repairs.
    The same for a key put into the hot set in front of it, which packets fill only
    with keys of the interval set (DESIGN §6: what a root process adds is tamper)."""
    from platforms.nftables import NftablesBackend
    e_ns, outside = lab.ns("endpoint"), lab.addr("outside", 4)
    tamper = f"add element netdev cordon {target}_a {{ {outside} . 17 . 9 }}"
    nft_backend.apply(plan_a())
    if nft_backend.read_back().details["tamper"] == "blocked":  # owned: refused outright
        assert _nft(e_ns, tamper).returncode != 0
        assert nft_backend.read_back().enforces(plan_a())
    path = tmp_path / "cordon.nft"  # the same ruleset with no owner (Linux < 6.9)
    path.write_text(nft_backend.render(plan_a()))
    nft_backend.clear()
    nft_backend.close()
    nft_backend = NftablesBackend(netns=e_ns)
    try:
        assert _nft(e_ns, "-f", str(path)).returncode == 0
        nft_backend._table_flags = 0  # what the persist probe finds on such a kernel
        nft_backend.apply(plan_a())  # Cordon's own encoding of it, still with no owner
        assert nft_backend.read_back().enforces(plan_a()), nft_backend.read_back().details["problems"]
        assert _raw_send(lab, False, ("ipv4-udp",)) == {"ipv4-udp": False, "receiver alive": True}
        gen = nft_backend.read_back().details["set_generation"]
        assert _nft(e_ns, tamper.replace(f"{target}_a", f"{target}_{gen}")).returncode == 0
        assert _raw_send(lab, False, ("ipv4-udp",))["ipv4-udp"], "the added element opens the raw path"
        _named_then_repaired(lab, nft_backend, {
            "out_l4": f"netdev set out_l4_{gen}: elements differ from table inet cordon's",
            "out_l4_hot": f"netdev cordon set out_l4_hot_{gen}: 1 keys in no element of out_l4_{gen} "
                          f"(e.g. {outside} . 17 . 9)"}[target])
    finally:
        nft_backend.clear()
        nft_backend.close()
