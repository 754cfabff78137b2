"""What the kernel holds for eBPFDivert (Linux): its TC programs on every device.

eBPFDivert enforces every handle through one `clsact` qdisc per device with a BPF filter
on ingress and one on egress (programs named tc_divert_ingress / tc_divert_egress).
Deleting the qdisc or a filter, or a device that appeared after the handles were opened,
leaves packets that no handle sees: that is what `missing()` reports. Windows has no
equivalent read-back (the driver's filters are not listable); there `attachments()`
returns None.
"""
from __future__ import annotations

import sys

PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
PROGRAM_PREFIX = "tc_divert_"
PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}


def attachments() -> dict[str, dict[str, list[str]]] | None:
    """{device: {"ingress": [program names], "egress": [...]}} in this process's netns."""
    if not sys.platform.startswith("linux"):
        return None
    from pyroute2 import IPRoute
    seen: dict[str, dict[str, list[str]]] = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            seen[name] = {}
            for hook, parent in PARENTS.items():
                try:
                    filters = ipr.get_filters(index=link["index"], parent=parent)
                except Exception:  # noqa: BLE001 - no clsact qdisc: nothing attached
                    filters = []
                names = []
                for f in filters:
                    opts = f.get_attr("TCA_OPTIONS")
                    prog = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
                    if prog:
                        names.append(prog)
                seen[name][hook] = names
    return seen


def missing(seen: dict[str, dict[str, list[str]]]) -> list[str]:
    """"device/hook" for every hook of every device without an eBPFDivert program."""
    return [f"{dev}/{hook}" for dev, hooks in sorted(seen.items()) for hook in PARENTS
            if not any(n.startswith(PROGRAM_PREFIX) for n in hooks.get(hook, []))]


def ephemeral_ports(default: tuple[int, int]) -> tuple[int, int]:
    """The local port range the host's own connections come from: Linux's sysctl in this
    process's network namespace; elsewhere `default` (Windows' default dynamic range)."""
    if not sys.platform.startswith("linux"):
        return default
    try:
        with open(PORT_RANGE) as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return default
    return (lo, hi) if 0 < lo <= hi <= 65535 else default
