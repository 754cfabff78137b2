"""The exception semantics of a plan for one packet, in user space (the guard handles).

The DROP handles' filters are stateless; a UDP datagram from an exception peer cannot be
told apart from a reply there. The guard diverts those packets here: FlowDecider lets one
in only for a (local port, peer, peer port) the host sent to first. In the coarse shape
(a plan too big for the filters) it judges every exception packet.
"""
from __future__ import annotations

import ipaddress
import time

from platforms.plan import Flow
from platforms.windivert.filter import EPHEMERAL_DEFAULT, ICMP_REPLY_TYPES, PEER_PORTS_FROM

UDP_TIMEOUT = 120.0        # s, like conntrack's assured UDP timeout
UDP_TABLE_MAX = 65536      # learned UDP flows; new ones are refused when full (fail closed)
_PROTO_NAME = {6: "tcp", 17: "udp", 1: "icmp"}


class FlowDecider:
    """The plan's exception semantics for one packet, with the UDP flows the host opened.

    Keys of the UDP table are (local port, peer address, peer port) of datagrams the host
    sent under an out flow; a datagram from the peer is a reply only if it matches one.
    """

    def __init__(self, flows: tuple[Flow, ...], clock=time.monotonic,
                 ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT) -> None:
        self._ephemeral = ephemeral
        self._exact: dict[int, list[Flow]] = {}
        self._nets: list[tuple[int, int, Flow]] = []
        for f in flows:
            if f.origin != "exception":
                continue
            net = f.ip_network
            if net.num_addresses == 1:
                self._exact.setdefault(int(net.network_address), []).append(f)
            else:
                self._nets.append((int(net.network_address), int(net.broadcast_address), f))
        self._udp: dict[tuple[int, int, int], float] = {}
        self._clock = clock

    def _flows_for(self, addr: int) -> list[Flow]:
        return self._exact.get(addr, []) + [f for lo, hi, f in self._nets if lo <= addr <= hi]

    def decide(self, outbound: bool, proto: int, src: str, dst: str, sport: int | None, dport: int | None,
               syn: bool = False, ack: bool = False, icmp_type: int | None = None) -> bool:
        remote = int(ipaddress.IPv4Address(dst if outbound else src))
        name = _PROTO_NAME.get(proto, "other")
        for flow in self._flows_for(remote):
            if flow.protocol not in ("any", name):
                continue
            if self._allows(flow, outbound, name, remote, sport, dport, syn, ack, icmp_type):
                return True
        return False

    def _allows(self, flow, outbound, name, remote, sport, dport, syn, ack, icmp_type) -> bool:
        opener = outbound == (flow.direction == "out")  # packet goes in the flow's original direction
        if name == "other":
            return outbound or flow.direction == "in"
        if name == "icmp":
            return opener or icmp_type in ICMP_REPLY_TYPES
        new_tcp = name == "tcp" and syn and not ack

        def ports_ok(p):
            return not flow.ports or any(r.first <= p <= r.last for r in flow.ports)

        if flow.direction == "out":
            if outbound:
                if ports_ok(dport) and name == "udp":
                    self._learn((sport, remote, dport))
                return ports_ok(dport)
            if not ports_ok(sport) or new_tcp:
                return False
            if name == "tcp":   # no state in the kernel either: the filter's rule (LIMITS)
                return self._ephemeral[0] <= dport <= self._ephemeral[1]
            return self._known((dport, remote, sport))
        if not outbound:
            return ports_ok(dport)
        return ports_ok(sport) and not new_tcp and (name != "tcp" or dport >= PEER_PORTS_FROM)

    def _learn(self, key) -> None:
        if key not in self._udp and len(self._udp) >= UDP_TABLE_MAX:
            self._expire()
            if len(self._udp) >= UDP_TABLE_MAX:
                return
        self._udp[key] = self._clock() + UDP_TIMEOUT

    def _known(self, key) -> bool:
        until = self._udp.get(key)
        if until is None or until < self._clock():
            return False
        self._udp[key] = self._clock() + UDP_TIMEOUT
        return True

    def _expire(self) -> None:
        now = self._clock()
        for k in [k for k, t in self._udp.items() if t < now]:
            del self._udp[k]

    def adopt(self, other: "FlowDecider") -> None:
        """Keep the UDP flows learned under the previous plan that this plan still allows."""
        for (lport, remote, rport), until in list(other._udp.items()):
            if any(f.direction == "out" and f.protocol in ("udp", "any")
                   and (not f.ports or any(r.first <= rport <= r.last for r in f.ports))
                   for f in self._flows_for(remote)):
                self._udp[(lport, remote, rport)] = until

    def decide_packet(self, p) -> bool:
        if p.ipv4 is None or p.ipv4.mf or p.ipv4.frag_offset:
            return False    # fragments: never judged (filter.py drops them too)
        proto = p.protocol[0]
        tcp = p.tcp
        icmp = p.icmpv4
        return self.decide(p.is_outbound, proto, p.src_addr, p.dst_addr, p.src_port, p.dst_port,
                           syn=bool(tcp and tcp.syn), ack=bool(tcp and tcp.ack),
                           icmp_type=icmp.type if icmp else None)
