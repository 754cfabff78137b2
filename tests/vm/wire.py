"""What really left the guest: tcpdump on the router's side of the guest's tap, the wire.

While the guest is isolated, every IP or IPv6 packet the guest sends must belong to a flow
the expected rules allow (tests/harness/expect.py: vendor, DNS, DHCP, enforced exceptions,
and replies to the allowed inbound ones). Anything else - a SYN, an RST, an echo reply, a
router solicitation - is a leak, whether or not a probe was waiting for it. This also
covers the boot window when no responder runs in the guest yet.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from tests.harness import netns
from tests.harness.lab import load_factor


def _ports(ports, side: str) -> str:
    if not ports:
        return ""
    terms = [f"{side} port {a}" if a == b else f"{side} portrange {a}-{b}" for a, b in ports]
    return " and (" + " or ".join(terms) + ")"


def allowed_filter(model) -> str:
    """A pcap filter for the packets the guest may send while `model` is in force."""
    terms = []
    for r in model.rules():
        for proto in sorted(r.protos):
            if r.direction == "out":   # the guest opens: to the peer's port
                terms.append(f"(dst net {r.network} and {proto}"
                             f"{_ports(r.ports, 'dst') if proto != 'icmp' else ''})")
            else:                      # the peer opens: the guest answers from its port
                terms.append(f"(dst net {r.network} and {proto}"
                             f"{_ports(r.ports, 'src') if proto != 'icmp' else ''})")
    if model.config.get("vendor", {}).get("dhcp", True):
        terms.append("(udp src port 68 and udp dst port 67)")
    return " or ".join(terms) or "none"


class WireWatch:
    """tcpdump of everything the guest (by MAC) sends, to a file; `leaks(model)` reads it back
    with the model's allowed flows filtered out."""

    def __init__(self, lab, name: str) -> None:
        self.lab = lab
        self.path = os.path.join(lab.rundir, f"wire-{name}.pcap")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WireWatch":
        mac = self.lab.guest.MAC
        self.proc = subprocess.Popen(
            netns.exec_argv(self.lab.ns("router"), "tcpdump", "-i", "to-endpoint", "-U", "-n", "-s", "200",
                            "-w", self.path, f"ether src {mac} and (ip or ip6)"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10 * load_factor()
        while not os.path.exists(self.path):  # tcpdump creates the file once it captures
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {self.proc.stderr.read().decode()[-300:]}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def packets(self, pcap_filter: str = "") -> list[str]:
        argv = ["tcpdump", "-r", self.path, "-n", "-tt"] + ([pcap_filter] if pcap_filter else [])
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"tcpdump -r: {r.stderr.strip()[-300:]}")
        return [line for line in r.stdout.splitlines() if line.strip()]

    def leaks(self, model) -> list[str]:
        return self.packets(f"not ({allowed_filter(model)})")

    def __enter__(self) -> "WireWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
