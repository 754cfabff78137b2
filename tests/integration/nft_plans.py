"""Plans for the nftables integration tests, built against the harness lab's addresses,
and the expected verdict of a probe computed from a plan's flows (never from the rules)."""
from __future__ import annotations

import json
import os
import subprocess

from platforms.plan import Flow, Plan, PortRange
from tests.harness import oracle

VENDOR, DNS, RMM, JUMP = "198.51.100.10", "198.51.100.53", "203.0.113.20", "203.0.113.5"


def base_flows() -> list[Flow]:
    return [
        Flow("out", "tcp", f"{VENDOR}/32", (PortRange(443, 443),), "vendor", "vendor"),
        Flow("out", "udp", f"{DNS}/32", (PortRange(53, 53),), "dns", "dns"),
        Flow("out", "tcp", f"{DNS}/32", (PortRange(53, 53),), "dns", "dns"),
    ]


def plan_a() -> Plan:
    """Vendor, DNS, an outbound exception (RMM tcp/8080) and an inbound one (jump -> 3389)."""
    return Plan("standard", tuple(base_flows() + [
        Flow("out", "tcp", f"{RMM}/32", (PortRange(8080, 8080),), "exception", "rmm"),
        Flow("in", "tcp", f"{JUMP}/32", (PortRange(3389, 3389),), "exception", "jump rdp"),
    ]), dhcp=True, policy_version=1)


def plan_b(extra: int = 0) -> Plan:
    """Vendor, DNS, jump may ping in, RMM on udp/53 only, plus `extra` filler exceptions
    in 192.0.2.128/25's neighbourhood that no lab host uses."""
    flows = base_flows() + [
        Flow("in", "icmp", f"{JUMP}/32", (), "exception", "jump ping"),
        Flow("out", "udp", f"{RMM}/32", (PortRange(53, 53),), "exception", "rmm dns"),
    ]
    for i in range(extra):
        flows.append(Flow("out", "tcp", f"192.0.2.{128 + i % 100}/32",
                          (PortRange(1000 + i, 1000 + i),), "exception", f"filler {i}"))
    return Plan("standard", tuple(flows), dhcp=False, policy_version=2)


def plan_to_json(plan: Plan) -> str:
    return json.dumps(plan.to_json())


def expected_allowed(plan: Plan | None, src_addr: str, dst_addr: str, proto: str, port,
                     endpoint_addrs: set[str], forwarded: bool = False) -> bool:
    """What the plan says about one probe (tests.harness.oracle). `plan` None = not
    isolated: all passes."""
    if plan is None:
        return True
    if forwarded:
        return False
    inbound = dst_addr in endpoint_addrs
    return oracle.allows(oracle.plan_rules(plan), "in" if inbound else "out", proto,
                         src_addr if inbound else dst_addr, port, dhcp=plan.dhcp)


def nft(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"nft {' '.join(args)} in {ns}: {r.stderr.strip()}")
    return r


def nft_json_table(ns: str) -> list | None:
    """`nft -j list table inet cordon` without the table's flags: nft 1.0.6 prints garbage
    for the `persist` flag it does not know (see owner_flag for what it can show)."""
    r = nft(ns, "-j", "list", "table", "inet", "cordon", check=False)
    if r.returncode:
        return None
    out = [o for o in json.loads(r.stdout)["nftables"] if "metainfo" not in o]
    for o in out:
        if "table" in o:
            o["table"].pop("flags", None)
    return out


def owner_flag(ns: str) -> bool:
    """Does nft list the table with the owner flag?"""
    text = nft(ns, "list", "table", "inet", "cordon").stdout
    return any(line.split()[:2] == ["flags", "owner"] for line in text.splitlines())


def repo_env() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
