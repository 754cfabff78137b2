"""Which open connections an isolation plan cuts: responders want to know which C2
channel they just closed. Observation only; enforcement is the backend's job."""
from __future__ import annotations

import ipaddress
import socket

import psutil

from platforms.plan import Plan

_PROTO = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


def cut_by(plan: Plan) -> list[dict]:
    """Established connections (and connected UDP sockets) that `plan` does not allow."""
    cut = []
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return cut
    for c in conns:
        if not c.raddr or (c.type == socket.SOCK_STREAM and c.status != psutil.CONN_ESTABLISHED):
            continue
        remote = ipaddress.ip_address(c.raddr.ip)
        if remote.is_loopback:
            continue
        proto = _PROTO.get(c.type, "other")
        if remote.version == 4 and plan.allows(proto, remote, c.laddr.port, c.raddr.port):
            continue
        try:
            name = psutil.Process(c.pid).name() if c.pid else None
        except psutil.Error:
            name = None
        cut.append({"proto": proto, "local": f"{c.laddr.ip}:{c.laddr.port}",
                    "remote": f"{c.raddr.ip}:{c.raddr.port}", "pid": c.pid, "process": name})
    return cut
