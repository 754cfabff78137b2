"""Pure rendering of a Plan into the Cordon nftables ruleset: sets, chains, rules, nft text.

Shape (the same for every plan; only set elements and the DHCP rules change):

  table inet cordon
    set out_l4_a / in_l4_a   ipv4_addr . inet_proto . inet_service   tcp/udp flows
    set out_l3_a / in_l3_a   ipv4_addr . inet_proto               icmp (1) and any (0-255)
    chain input / output / forward   filter hooks, priority 0 (after conntrack), policy drop

An original-direction packet must match the set of its direction with its own header;
a reply-direction packet must match the set of the flow's original direction with the
conntrack *original* tuple. So a peer allowed only outbound can never open a connection
in (its SYN is original-direction and it is not in in_*), whatever source port it uses,
and connections that were open before isolation die unless their tuple is in a set.

ICMP errors (ct state related) pass when the connection they refer to is an allowed
tcp/udp flow, so that path-MTU discovery keeps the vendor connection alive. Errors about
icmp/any flows travel in the reply direction and are covered by the reply rules.
"""
from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass, field

from platforms.plan import DHCP_BROADCAST, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, Plan
from platforms.nftables.boxes import disjoint, disjoint_timed
from platforms.nftables.shape import (DHCP_BROADCAST_TAG, DHCP_SERVER_TAG, CHAIN_HOOKS, FIELDS, HOT_SETS, HOT_SIZE,
                                     HOT_TIMEOUT_MS, PROTO_NAME, PROTO_NUM, SET_FIELDS, SET_NAMES, TABLE,
                                     hot_set, set_name)
from platforms.nftables.vocabulary import (CtDirection, CtRelated, Family, Interface, IpAddr, Key, L4Proto,
                                           Rule, SetAdd, SetLookup, UdpPorts)

# A set element: one inclusive (first, last) range per field of the set's key.
Element = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Ruleset:
    dhcp: bool
    elements: dict  # set name -> tuple[Element, ...], sorted, pairwise disjoint
    # set name -> {element: when it stops (seconds since the epoch)}; elements not in it
    # never expire. Installed as kernel element timeouts (DESIGN §11).
    expires: dict = field(default_factory=dict)
    dhcp_servers: tuple[str, ...] = ()  # the plan's leased DHCP servers (rules, not set elements)

    def chains(self) -> dict[str, tuple[Rule, ...]]:
        return chain_rules(self.dhcp, self.dhcp_servers)

    def timeouts_ms(self, name: str, now: float | None = None) -> dict:
        """The kernel timeout of each expiring element of set `name`, from `now`; at
        least 1 ms (an element due already lapses at once)."""
        now = time.time() if now is None else now
        return {el: max(1, math.ceil((at - now) * 1000)) for el, at in self.expires.get(name, {}).items()}


# Where a flow's boxes go: (direction, protocol) -> (set name, protocol number), and
# the b range of a flow without ports (l4: every port; l3: icmp 1, any 0-255).
_SET_OF = {(d, p): (f"{d}_l4", PROTO_NUM[p]) if p in ("tcp", "udp") else (f"{d}_l3", 0)
           for d in ("in", "out") for p in ("tcp", "udp", "icmp", "any")}
_NO_PORTS = {"tcp": (0, 65535), "udp": (0, 65535), "icmp": (1, 1), "any": (0, 255)}


def build(plan: Plan) -> Ruleset:
    # (set name, protocol number) -> boxes (addr first, addr last, b first, b last), where
    # b is the port range in an l4 set and the protocol range in an l3 set; in a plan with
    # flows that stop at a time (DESIGN §11), (box, when it stops or None) pairs.
    # Straight from the flows: this is the apply path of 20,000-flow plans, so one dict
    # lookup per flow and no intermediate tuples.
    timed = any(f.expires is not None for f in plan.flows)
    boxes: dict[tuple[str, int], list] = {}
    for f in plan.flows:
        key = _SET_OF[(f.direction, f.protocol)]
        out = boxes.get(key)
        if out is None:
            out = boxes[key] = []
        a0, a1 = f.addr_range
        ports = f.ports
        if len(ports) == 1 and not timed:
            p = ports[0]
            out.append((a0, a1, p.first, p.last))
            continue
        own = [(a0, a1, p.first, p.last) for p in ports] if ports else [(a0, a1) + _NO_PORTS[f.protocol]]
        out += [(box, f.expires) for box in own] if timed else own
    elements = {name: [] for name in SET_FIELDS}
    expires: dict = {}
    for (name, proto), items in boxes.items():
        l4, pr = name.endswith("_l4"), (proto, proto)
        if not timed:
            elements[name] += [((a0, a1), pr, (b0, b1)) if l4 else ((a0, a1), (b0, b1))
                               for a0, a1, b0, b1 in disjoint(items)]
            continue
        for (a0, a1, b0, b1), ends in disjoint_timed(items):
            el = ((a0, a1), pr, (b0, b1)) if l4 else ((a0, a1), (b0, b1))
            elements[name].append(el)
            if ends is not None:
                expires.setdefault(name, {})[el] = ends
    # One protocol per set is already in order (disjoint sorts): sorting it again is a
    # single pass.
    return Ruleset(plan.dhcp, {name: tuple(sorted(items)) for name, items in elements.items()}, expires,
                   plan.dhcp_servers)


def chain_rules(dhcp: bool, dhcp_servers: tuple[str, ...] = ()) -> dict[str, tuple[Rule, ...]]:
    return {
        "input": _host_chain("iif", dhcp_rules("input", dhcp, dhcp_servers), (Key.IP_SADDR, "in"),
                             (Key.CT_ORIG_DADDR, "out")),
        "output": _host_chain("oif", dhcp_rules("output", dhcp, dhcp_servers), (Key.IP_DADDR, "out"),
                              (Key.CT_ORIG_SADDR, "in")),
        "forward": (),
    }


def dhcp_rules(chain: str, dhcp: bool, servers: tuple[str, ...]) -> list[Rule]:
    """DHCP only as DHCP (Plan): output, client 68 -> server 67 to the broadcast address or
    a leased server; input, server 67 -> client 68 to the broadcast address (a limited
    broadcast is never routed: it comes from the link) or from a leased server. The
    netdev layer below checks the BOOTP shape and size of the same packets on the wire."""
    if not dhcp:
        return []
    if chain == "output":
        ports, peer = UdpPorts(DHCP_CLIENT_PORT, DHCP_SERVER_PORT), Key.IP_DADDR
    else:
        ports, peer = UdpPorts(DHCP_SERVER_PORT, DHCP_CLIENT_PORT), Key.IP_SADDR
    rules = [Rule(DHCP_BROADCAST_TAG, (ports, IpAddr(Key.IP_DADDR, DHCP_BROADCAST)), "accept")]
    return rules + [Rule(f"{DHCP_SERVER_TAG}{n}", (ports, IpAddr(peer, s)), "accept")
                    for n, s in enumerate(servers, start=1)]


ORIGINAL, REPLY = CtDirection(0), CtDirection(1)


def _cached(tag: str, head: tuple, keys: tuple, base: str) -> list[Rule]:
    """The rules that accept a packet whose `keys` are in interval set `base`: first the
    hot set (exact keys, a hash lookup); then the interval set, putting the keys into the
    hot set; then the interval set alone, which only a full hot set leaves to it."""
    hot = hot_set(base)
    return [Rule(f"{tag}-hot", head + (SetLookup(keys, hot),), "accept"),
            Rule(f"{tag}-fill", head + (SetLookup(keys, base), SetAdd(keys, hot)), "accept"),
            Rule(tag, head + (SetLookup(keys, base),), "accept")]


def _host_chain(lo_key, dhcp, orig, reply) -> tuple[Rule, ...]:
    orig_addr, orig_dir = orig
    reply_addr, reply_dir = reply
    l4_reply = (reply_addr, Key.CT_ORIG_PROTO, Key.CT_ORIG_PROTO_DST)
    # Bulk traffic (tcp/udp of allowed flows) matches in the first rules, mostly in a
    # hot set; every rule before the IPv6 drop only accepts IPv4 (ip/ct ip keys need
    # IPv4), so the order changes nothing but the cost per packet.
    rules = _cached("cordon/original-l4", (ORIGINAL,), (orig_addr, Key.L4PROTO, Key.TH_DPORT),
                    f"{orig_dir}_l4")
    # The packet's protocol is matched only so that nft can type proto-dst; the reply
    # of a tcp/udp flow always has the flow's protocol.
    for proto in (6, 17):
        rules += _cached(f"cordon/reply-{PROTO_NAME[proto]}", (REPLY, L4Proto(proto)), l4_reply,
                         f"{reply_dir}_l4")
    rules += [Rule("cordon/loopback", (Interface(lo_key, 1),), "accept"),  # lo is ifindex 1 in every netns
              Rule("cordon/ipv6-drop", (Family(10),), "drop")]  # all other IPv6
    rules += dhcp
    rules += _cached("cordon/original-l3", (ORIGINAL,), (orig_addr, Key.L4PROTO), f"{orig_dir}_l3")
    rules += _cached("cordon/reply-l3", (REPLY,), (reply_addr, Key.CT_ORIG_PROTO), f"{reply_dir}_l3")
    for addr, d in ((Key.CT_ORIG_DADDR, "out"), (Key.CT_ORIG_SADDR, "in")):
        rules.append(Rule(f"cordon/related-{d}", (CtRelated(), L4Proto(1), SetLookup(
            (addr, Key.CT_ORIG_PROTO, Key.CT_ORIG_PROTO_DST), f"{d}_l4")), "accept"))
    return tuple(rules)


# --- read-back: set elements -> plan atoms -------------------------------------------

def atoms_from_elements(elements: dict) -> frozenset:
    """Rebuild plan atoms from set elements. Anything the renderer never produces is
    kept as an atom with a protocol named `unknown:...`, so it cannot digest equal."""
    atoms = set()
    for name, items in elements.items():
        direction, kind = name.split("_")
        for el in items:
            (a0, a1), (p0, p1) = el[0], el[1]
            nets = ipaddress.summarize_address_range(ipaddress.IPv4Address(a0),
                                                     ipaddress.IPv4Address(a1))
            if kind == "l4":
                b0, b1 = el[2]
                proto = PROTO_NAME.get(p0) if p0 == p1 and p0 in (6, 17) else None
                ports = (0, 0) if (b0, b1) == (0, 65535) else (b0, b1)
                if proto is None or ports[0] == 0 and ports != (0, 0):
                    proto, ports = f"unknown:{p0}-{p1}:{b0}-{b1}", (0, 0)
            else:
                proto = {(1, 1): "icmp", (0, 255): "any"}.get((p0, p1), f"unknown:{p0}-{p1}")
                ports = (0, 0)
            for net in nets:
                atoms.add((direction, proto, str(net), ports[0], ports[1]))
    return frozenset(atoms)


def canonical_elements(plan: Plan) -> dict:
    return build(plan).elements


# --- nft text -------------------------------------------------------------------------

def render_text(rs: Ruleset, gen: str = "a", now: float | None = None) -> str:
    lines = [
        "# Cordon isolation ruleset. Load with `nft -f FILE` (replaces an unowned cordon table).",
        "# The agent installs this same table through netlink in one batch and adds table",
        "# flags owner,persist there, which a short-lived `nft` process cannot hold.",
        "# Elements with a timeout (host exceptions, expires_at) lapse in the kernel by themselves.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    lines += set_text(rs, gen, now)
    for chain, rules in rs.chains().items():
        lines += [f"\tchain {chain} {{",
                  f"\t\ttype filter hook {CHAIN_HOOKS[chain]} priority filter; policy drop;"]
        lines += [f"\t\t{r.text(gen)}" for r in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def set_text(rs: Ruleset, gen: str, now: float | None = None) -> list[str]:
    """The set declarations of either table: interval sets with their elements, hot sets."""
    lines = []
    for name in SET_NAMES:
        lines += [f"\tset {set_name(name, gen)} {{", f"\t\ttype {' . '.join(FIELDS[name])}"]
        if name in HOT_SETS:
            lines += [f"\t\tsize {HOT_SIZE}", "\t\tflags dynamic,timeout", f"\t\ttimeout {HOT_TIMEOUT_MS}ms", "\t}"]
            continue
        lines.append("\t\tflags interval,timeout")
        items = rs.elements.get(name, ())
        timeouts = rs.timeouts_ms(name, now)
        if items:
            body = ",\n\t\t\t".join(_element_text(el) + (f" timeout {timeouts[el]}ms" if el in timeouts else "")
                                      for el in items)
            lines.append(f"\t\telements = {{ {body} }}")
        lines.append("\t}")
    return lines


def _element_text(el: Element) -> str:
    out = [_addr_text(*el[0])]
    for first, last in el[1:]:
        out.append(str(first) if first == last else f"{first}-{last}")
    return " . ".join(out)


def _addr_text(first: int, last: int) -> str:
    a, b = ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
    if first == last:
        return str(a)
    nets = list(ipaddress.summarize_address_range(a, b))
    return str(nets[0]) if len(nets) == 1 else f"{a}-{b}"
