"""More DESIGN §6 paths, with real packets, IPv4 and IPv6: VMs on a Linux bridge that
holds the endpoint's NIC (the "attacker" sets the bridge-nf-call sysctls both ways), a tun
device created after isolation began, and forwarding turned back on by root (ip_forward,
rp_filter). Each is first shown OPEN while normal (so the test can fail), then closed while
isolated with the peer shown alive, then open again after release."""
from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import subprocess
import time

import pytest

from tests.harness import ALLOWED, BLOCKED, netns
from tests.harness.errors import HarnessError
from tests.harness.lab import load_factor
from tests.harness.packets import udp_packet
from tests.harness.waits import wait_until
from tests.integration.nft_fixtures import nft_backend  # noqa: F401  (fixture)
from tests.integration.nft_plans import plan_a

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")]

VM4, VM6 = "192.0.2.11", "2001:db8:2::11"  # in the endpoint's own link subnets


def _ping(ns: str, addr: str, family: int) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", f"-{family}", "-n", "-c", "2", "-W",
                           str(max(1, round(load_factor()))), addr], capture_output=True).returncode == 0


def _sysctl(ns: str, key: str, value: int) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"], check=True)


# --- a bridge with a VM ----------------------------------------------------------------

def _bridge_with_vm(lab) -> str:
    """br0 in the endpoint namespace holds eth0 and a VM's port: the endpoint's addresses
    move to br0, the VM (a namespace) gets its own address on the same link."""
    e_ns, host = lab.ns("endpoint"), lab.hosts["endpoint"]
    vm = f"{e_ns}-vm"
    subprocess.run(["ip", "netns", "add", vm], check=True)
    lab.namespaces.append(vm)  # removed at teardown with the lab's own
    g4, g6 = host.gateway(4), host.gateway(6)
    netns.ip("link", "add", "vport0", "type", "veth", "peer", "name", "eth0", "netns", vm, ns=e_ns)
    netns.ip("-batch", "-", ns=e_ns, input="\n".join([
        "link add br0 type bridge", "link set br0 up",
        f"addr del {host.v4} dev eth0", f"addr del {host.v6} dev eth0",
        "link set eth0 master br0", "link set vport0 master br0", "link set vport0 up",
        f"addr add {host.v4} dev br0", f"addr add {host.v6} dev br0 nodad",
        f"route replace default via {g4}", f"route replace default via {g6}"]) + "\n")
    netns.ip("-batch", "-", ns=vm, input="\n".join([
        f"addr add {VM4}/29 dev eth0", f"addr add {VM6}/64 dev eth0 nodad", "link set eth0 up",
        "link set lo up", f"route add default via {g4}", f"route add default via {g6}"]) + "\n")
    return vm


def _vm_paths(lab, vm: str) -> dict:
    out = lab.ns("outside")
    return {f"{way} v{f}": _ping(*((vm, lab.addr("outside", f)) if way == "vm->outside"
                                   else (out, VM4 if f == 4 else VM6)), f)
            for way in ("vm->outside", "outside->vm") for f in (4, 6)}


def _await_open(fn, what: str) -> dict:
    """Poll (load-scaled deadline) until every path of `fn()` is open; a fresh bridge
    port needs a moment to forward."""
    def all_open():
        seen = fn()
        return seen if all(seen.values()) else None
    return wait_until(all_open, 10, f"{what} must be open while normal, or this test proves nothing",
                      error=HarnessError)


@pytest.mark.parametrize("nf_call", [0, 1], ids=["bridge-nf-call=0", "bridge-nf-call=1"])
def test_a_vm_on_a_bridge_with_the_nic_is_cut_off_whatever_the_bridge_sysctls(lab, nft_backend, nf_call):  # noqa: F811
    e_ns = lab.ns("endpoint")
    vm = _bridge_with_vm(lab)
    _await_open(lambda: _vm_paths(lab, vm), "bridged VM traffic")
    nft_backend.apply(plan_a())
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        _sysctl(e_ns, key, nf_call)  # the attacker, as root on the endpoint
    assert _vm_paths(lab, vm) == {"vm->outside v4": False, "vm->outside v6": False,
                                  "outside->vm v4": False, "outside->vm v6": False}
    assert _ping(lab.ns("router"), lab.addr("outside", 4), 4), "outside host alive"
    assert lab.probe("endpoint", "vendor", "tcp", 443).verdict == ALLOWED, "the vendor over br0"
    assert nft_backend.read_back().enforces(plan_a())
    nft_backend.clear()
    _await_open(lambda: _vm_paths(lab, vm), "release restores bridged VM traffic:")


# --- a tun device created after isolation ----------------------------------------------

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
TUN_LOCAL = {4: "198.51.100.201", 6: "2001:db8:77::1"}
TUN_PEER = {4: "198.51.100.200", 6: "2001:db8:77::2"}  # "the Internet" behind the tun
TUN_PORT = 4789


def _open_tun(lab, name: str) -> int:
    """A tun device in the endpoint namespace, as a VPN client would make it; the fd is
    the far end. Closing the fd removes the device."""
    import fcntl
    with netns.entered(lab.ns("endpoint")):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    netns.ip("-batch", "-", ns=lab.ns("endpoint"), input="\n".join([
        f"addr add {TUN_LOCAL[4]} peer {TUN_PEER[4]} dev {name}",
        f"addr add {TUN_LOCAL[6]}/64 dev {name} nodad", f"link set {name} up"]) + "\n")
    return fd


def _tun_read(fd: int, nonce: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            return False
        try:
            if nonce in os.read(fd, 65535):
                return True
        except BlockingIOError:
            continue
    return False


def _tun_paths(lab, fd: int) -> dict:
    """{"out vF": the far end of the tun saw a datagram the endpoint sent to the peer,
        "in vF": a datagram the far end wrote into the tun reached a socket on the endpoint}"""
    e_ns, wait = lab.ns("endpoint"), 1.0 * load_factor()
    seen = {}
    for f in (4, 6):
        af = socket.AF_INET if f == 4 else socket.AF_INET6
        nonce = secrets.token_bytes(16)
        s = netns.socket_in(e_ns, af, socket.SOCK_DGRAM)
        try:
            try:
                s.sendto(nonce, (TUN_PEER[f], TUN_PORT))
            except OSError:
                pass  # EPERM from a drop at output: the far end must still see nothing
            seen[f"out v{f}"] = _tun_read(fd, nonce, wait)
        finally:
            s.close()
        r = netns.socket_in(e_ns, af, socket.SOCK_DGRAM)
        try:
            r.bind((TUN_LOCAL[f], TUN_PORT))
            nonce = secrets.token_bytes(16)
            os.write(fd, udp_packet(f, TUN_PEER[f], TUN_LOCAL[f], 40001, TUN_PORT, nonce))
            r.settimeout(wait)
            try:
                seen[f"in v{f}"] = r.recv(2048) == nonce
            except socket.timeout:
                seen[f"in v{f}"] = False
        finally:
            r.close()
    return seen


def test_a_tun_device_created_while_isolated_is_cut_off_both_ways(lab, nft_backend):  # noqa: F811
    fd = _open_tun(lab, "tun7")
    try:
        _await_open(lambda: _tun_paths(lab, fd), "the tun path")
    finally:
        os.close(fd)  # the device goes away with its fd
    nft_backend.apply(plan_a())
    nft_backend.wait_for_change(0.01)  # subscribe before the device appears
    fd = _open_tun(lab, "tun7")
    try:
        assert nft_backend.wait_for_change(10.0 * load_factor()), "rtnetlink must report tun7"
        assert not nft_backend.read_back().enforces(plan_a()), "tun7 has no netdev chains yet"
        nft_backend.apply(plan_a())  # what the engine's reconcile does on that change
        assert nft_backend.read_back().enforces(plan_a())
        assert "tun7" in nft_backend.read_back().details["netdev"]["devices"]
        assert _tun_paths(lab, fd) == {"out v4": False, "in v4": False, "out v6": False, "in v6": False}
        assert lab.probe("endpoint", "vendor", "tcp", 443).verdict == ALLOWED
        nft_backend.clear()
        _await_open(lambda: _tun_paths(lab, fd), "release restores the tun path:")
    finally:
        os.close(fd)


# --- forwarding switched back on by root -----------------------------------------------

def _forwarded(lab) -> dict:
    return {(src, dst, f): lab.probe(src, dst, proto, port, f).verdict
            for src, dst in (("behind", "outside"), ("outside", "behind"))
            for f in (4, 6) for proto, port in (("icmp", None), ("tcp", 443))}


@pytest.mark.parametrize("rp_filter", [0, 2], ids=["rp_filter=0", "rp_filter=2"])
def test_forwarding_sysctls_flipped_by_root_route_nothing_through(lab, nft_backend, rp_filter):  # noqa: F811
    e_ns = lab.ns("endpoint")
    normal = _forwarded(lab)
    assert set(normal.values()) == {ALLOWED}, f"the endpoint must route while normal: {normal}"
    nft_backend.apply(plan_a())
    for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1),
                       ("net.ipv4.conf.all.rp_filter", rp_filter),
                       ("net.ipv4.conf.default.rp_filter", rp_filter),
                       ("net.ipv4.conf.eth0.rp_filter", rp_filter),
                       ("net.ipv4.conf.all.accept_local", 1)):
        _sysctl(e_ns, key, value)
    isolated = _forwarded(lab)
    assert set(isolated.values()) == {BLOCKED}, isolated
    assert lab.probe("endpoint", "vendor", "tcp", 443).verdict == ALLOWED
    nft_backend.clear()
    assert set(_forwarded(lab).values()) == {ALLOWED}, "release restores routing"
