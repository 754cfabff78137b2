"""Which open connections an isolation plan cuts: responders want to know which C2
channel they just closed. Observation only; enforcement is the backend's job."""
from __future__ import annotations

import ipaddress
import socket

import psutil

from platforms.plan import Plan

_PROTO = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


def _allowed(plan: Plan, proto: str, local_port: int, remote_ip, remote_port: int) -> bool:
    for f in plan.flows:
        if f.protocol not in (proto, "any") or remote_ip not in f.ip_network:
            continue
        port = remote_port if f.direction == "out" else local_port
        if not f.ports or any(r.first <= port <= r.last for r in f.ports):
            return True
    return False


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
        if remote.version == 4 and _allowed(plan, proto, c.laddr.port, remote, c.raddr.port):
            continue
        try:
            name = psutil.Process(c.pid).name() if c.pid else None
        except psutil.Error:
            name = None
        cut.append({"proto": proto, "local": f"{c.laddr.ip}:{c.laddr.port}",
                    "remote": f"{c.raddr.ip}:{c.raddr.port}", "pid": c.pid, "process": name})
    return cut
