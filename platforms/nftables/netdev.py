"""The layer below inet: table `netdev cordon`, one ingress and one egress chain per
non-loopback device (DESIGN §6). It sees what the inet table never does: raw AF_PACKET
frames, macvlan/ipvlan children of a NIC, bridged frames (whatever the bridge sysctls
say), frames on devices added while isolated.

The netdev family has no conntrack (the kernel refuses `ct` there with EPROTO). So the
layer lets through only what *could* be an allowed flow, judged by the packet's own
header against copies of the inet sets, and leaves the stateful decision to the inet
table; a frame that bypasses the inet table (raw socket, macvlan, bridge) reaches at
most an allowed peer on an allowed port:
  egress:  IPv4 to an allowed peer (destination port in out_*, source port in in_*);
           ARP; DHCP requests to the broadcast address or a leased server.
  ingress: IPv4 from an allowed peer (source port in out_*, destination port in in_*);
           ICMP errors (the inet layer passes only those related to allowed flows);
           ARP; DHCP replies to the broadcast address or from a leased server.
DHCP packets must also be shaped like BOOTP (UDP length, op, magic cookie).
Everything else (IPv6, raw frames, other ethertypes) is dropped; the inet table drops
all IPv6 but loopback anyway, so no neighbour discovery is needed.

The table has the inet table's flags (owner|persist) and is written in the same batch.
"""
from __future__ import annotations

import socket
import struct

from platforms.plan import DHCP_BROADCAST
from platforms.nftables import wire as w
from platforms.nftables.exprs import (DYNSET_ADD, Cmp, Dynset, Immediate, Lookup, Meta, Payload,
                                      Undecodable, decode_list, encode_list)
from platforms.nftables.readback import HotIndex, hook_policy, hot_problems, set_elements, table_chains
from platforms.nftables.shape import SET_NAMES, TABLE, hot_set, set_name
from platforms.nftables.vocabulary import userdata, tag_of

NFPROTO_NETDEV = 5
HOOK_INGRESS, HOOK_EGRESS = 0, 1
NFTA_HOOK_DEV = 3
META_PROTOCOL, META_L4PROTO = 1, 16
CT_STATE, CT_DIRECTION = 0, 1
BASE_NETWORK, BASE_TRANSPORT = 1, 2
REG_1, REG32_00 = 1, 8
ETH_IP, ETH_ARP = b"\x08\x00", b"\x08\x06"
# ARP for Ethernet/IPv4: htype 1, ptype 0x0800, hlen 6, plen 4, then the operation.
ARP_SHAPE = {"request": b"\x00\x01\x08\x00\x06\x04\x00\x01", "reply": b"\x00\x01\x08\x00\x06\x04\x00\x02"}
BOOTP_COOKIE = b"\x63\x82\x53\x63"  # DHCP magic cookie, at UDP payload offset 236
DHCP_MIN_UDP, DHCP_MAX_UDP = 8 + 240, 1480  # header + BOOTP fixed part + cookie .. one MTU
ICMP_ERRORS = {3: "destination-unreachable", 11: "time-exceeded", 12: "parameter-problem"}


def _eq(reg: int, data: bytes):
    return Cmp(reg, 0, data)


def _ipv4():
    return [Meta(REG_1, META_PROTOCOL), _eq(REG_1, ETH_IP)]


def _keys(addr_off: int, port_off: int | None):
    out = [Payload(REG_1, BASE_NETWORK, addr_off, 4), Meta(REG32_00 + 1, META_L4PROTO)]
    if port_off is not None:
        out.append(Payload(REG32_00 + 2, BASE_TRANSPORT, port_off, 2))
    return out


def _lookup(addr_off: int, port_off: int | None, base: str, gen: str):
    return _keys(addr_off, port_off) + [Lookup(set_name(base, gen), REG_1, 0)]


def _cached(tag: str, addr_off: int, port_off: int | None, base: str, gen: str, key_text: str):
    """As render._cached: the hot set, then the interval set filling the hot set, then the
    interval set alone (reached only when the hot set is full). `key_text`: the keys in
    nft's words."""
    hot = hot_set(base)
    find = _ipv4() + _lookup(addr_off, port_off, base, gen)
    fill = _keys(addr_off, port_off) + [Dynset(set_name(hot, gen), DYNSET_ADD, REG_1, 0, 0)]
    text = f"meta protocol ip {key_text} @{set_name(base, gen)}"
    return [(f"{tag}-hot", _ipv4() + _lookup(addr_off, port_off, hot, gen),
             f"meta protocol ip {key_text} @{set_name(hot, gen)}"),
            (f"{tag}-fill", find + fill, f"{text} add @{set_name(hot, gen)} {{ {key_text} }}"),
            (tag, find, text)]


def _udp(sport: int, dport: int):
    return [Meta(REG_1, META_L4PROTO), _eq(REG_1, b"\x11"), Payload(REG_1, BASE_TRANSPORT, 0, 4),
            _eq(REG_1, struct.pack(">HH", sport, dport))]


def _dhcp_shape(op: int):
    """Sized like DHCP (UDP length), BOOTP op 1 request / 2 reply, the magic cookie."""
    return [Payload(REG_1, BASE_TRANSPORT, 4, 2),
            Cmp(REG_1, 5, struct.pack(">H", DHCP_MIN_UDP)),  # NFT_CMP_GTE
            Cmp(REG_1, 3, struct.pack(">H", DHCP_MAX_UDP)),  # NFT_CMP_LTE
            Payload(REG_1, BASE_TRANSPORT, 8, 1), _eq(REG_1, bytes([op])),
            Payload(REG_1, BASE_TRANSPORT, 8 + 236, 4), _eq(REG_1, BOOTP_COOKIE)]


def _arp(op: str):
    return [Meta(REG_1, META_PROTOCOL), _eq(REG_1, ETH_ARP),
            Payload(REG_1, BASE_NETWORK, 0, 8), _eq(REG_1, ARP_SHAPE[op])]


_ACCEPT = Immediate(0, w.NF_ACCEPT)
_SPORT, _DPORT, _SADDR, _DADDR = 0, 2, 12, 16


def _dhcp_rules(kind: str, servers) -> list[tuple[str, list, str]]:
    """DHCP only as DHCP, shaped (size, op, cookie): requests (egress, client 68 -> server
    67) to the broadcast address or a leased server; replies (ingress, 67 -> 68) to the
    broadcast address (never routed, so from the link) or from a leased server."""
    size = f"udp length {DHCP_MIN_UDP}-{DHCP_MAX_UDP}"
    if kind == "request":
        udp, shape = _udp(68, 67) + _dhcp_shape(1), f"udp sport 68 udp dport 67 {size} @th,64,8 1"
        peer, peer_text, name = _DADDR, "ip daddr", "cordon/nd-dhcp-request"
    else:
        udp, shape = _udp(67, 68) + _dhcp_shape(2), f"udp sport 67 udp dport 68 {size} @th,64,8 2"
        peer, peer_text, name = _SADDR, "ip saddr", "cordon/nd-dhcp-reply"
    shape += f" @th,1952,32 0x{BOOTP_COOKIE.hex()}"

    def rule(tag, off, text, addr):
        return (tag, _ipv4() + [Payload(REG_1, BASE_NETWORK, off, 4), _eq(REG_1, socket.inet_aton(addr))] + udp,
                f"meta protocol ip {text} {addr} {shape}")
    out = [rule(name if kind == "request" else f"{name}-broadcast", _DADDR, "ip daddr", DHCP_BROADCAST)]
    return out + [rule(f"{name}-server-{n}", peer, peer_text, addr) for n, addr in enumerate(servers, start=1)]


def chain_rules(dhcp: bool, gen: str, servers: tuple[str, ...] = ()) -> dict[str, list[tuple[str, list, str]]]:
    """{"ingress"|"egress": [(tag, expressions, nft text)]}, the same for every device;
    `servers`: the plan's leased DHCP servers."""
    g = gen
    egress, ingress = [], []
    for chain, tag, addr_off, peer in ((egress, "out", _DADDR, "ip daddr"), (ingress, "in", _SADDR, "ip saddr")):
        # (name, port offset, set): for egress the original direction of an outbound flow
        # (destination port in out_*) and the reply of an inbound one (source port in in_*);
        # for ingress the mirror image.
        l4 = ((("original", _DPORT, "out"), ("reply", _SPORT, "in")) if tag == "out" else
              (("reply", _SPORT, "out"), ("original", _DPORT, "in")))
        for kind, port_off, d in l4:
            port = "th dport" if port_off == _DPORT else "th sport"
            chain += _cached(f"cordon/nd-{tag}-{kind}-l4", addr_off, port_off, f"{d}_l4", g,
                             f"{peer} . meta l4proto . {port}")
        for kind, _port_off, d in l4:
            chain += _cached(f"cordon/nd-{tag}-{kind}-l3", addr_off, None, f"{d}_l3", g, f"{peer} . meta l4proto")
    ingress += [(f"cordon/nd-in-icmp-{name}", _ipv4() + [
        Meta(REG_1, META_L4PROTO), _eq(REG_1, b"\x01"), Payload(REG_1, BASE_TRANSPORT, 0, 1),
        _eq(REG_1, bytes([t]))], f"meta protocol ip meta l4proto icmp icmp type {name}")
        for t, name in ICMP_ERRORS.items()]
    for chain in (egress, ingress):
        chain += [(f"cordon/nd-arp-{op}", _arp(op),
                   f"meta protocol arp @nh,0,64 0x{ARP_SHAPE[op].hex()}") for op in ARP_SHAPE]
    if dhcp:
        egress += _dhcp_rules("request", servers)
        ingress += _dhcp_rules("reply", servers)
    return {"ingress": [(t, e + [_ACCEPT], x + f' accept comment "{t}"') for t, e, x in ingress],
            "egress": [(t, e + [_ACCEPT], x + f' accept comment "{t}"') for t, e, x in egress]}


def chain_name(hook: str, device: str) -> str:
    return f"{hook}_{device}"


# --- messages ------------------------------------------------------------------------

def _chain_body(hook: str, device: str) -> bytes:
    h = w.nest(w.NFTA_CHAIN_HOOK, w.u32(w.NFTA_HOOK_HOOKNUM, HOOK_INGRESS if hook == "ingress" else HOOK_EGRESS),
               w.u32(w.NFTA_HOOK_PRIORITY, 0), w.s(NFTA_HOOK_DEV, device))
    return (w.s(w.NFTA_CHAIN_TABLE, TABLE) + w.s(w.NFTA_CHAIN_NAME, chain_name(hook, device)) + h
            + w.u32(w.NFTA_CHAIN_POLICY, w.NF_DROP) + w.s(w.NFTA_CHAIN_TYPE, "filter"))


def _rule_body(chain: str, tag: str, exprs) -> bytes:
    return (w.s(w.NFTA_RULE_TABLE, TABLE) + w.s(w.NFTA_RULE_CHAIN, chain)
            + w.nest(w.NFTA_RULE_EXPRESSIONS, encode_list(exprs)) + w.attr(w.NFTA_RULE_USERDATA, userdata(tag)))


def device_msgs(device: str, dhcp: bool, gen: str, servers: tuple[str, ...] = ()) -> list[tuple]:
    """The two chains of one device with their rules (for a new device, or a rebuild)."""
    out = []
    for hook, rules in chain_rules(dhcp, gen, servers).items():
        out.append(("NEWCHAIN", w.NLM_F_CREATE, _chain_body(hook, device), NFPROTO_NETDEV))
        out += [("NEWRULE", w.NLM_F_CREATE | w.NLM_F_APPEND, _rule_body(chain_name(hook, device), t, e),
                 NFPROTO_NETDEV) for t, e, _ in rules]
    return out


def sets_msgs(flags: int, rs, gen: str = "a", element_msgs=None) -> list[tuple]:
    """Table netdev cordon with its sets (copies of the inet sets) and no chains: loaded
    alone, it enforces nothing. `element_msgs`: the inet table's NEWSETELEM messages of
    generation `gen`, whose bodies are the same here (same table and set names), so they
    are encoded once."""
    out = [("NEWTABLE", w.NLM_F_CREATE, w.table_body(flags), NFPROTO_NETDEV)]
    out += [("NEWSET", w.NLM_F_CREATE, w.set_body(n, gen), NFPROTO_NETDEV) for n in SET_NAMES]
    if element_msgs is None:
        element_msgs = [("NEWSETELEM", w.NLM_F_CREATE, body) for name, items in rs.elements.items()
                        for body in w.setelem_bodies(name, items, gen, rs.timeouts_ms(name))]
    return out + [(kind, fl, body, NFPROTO_NETDEV) for kind, fl, body in element_msgs]


def table_msgs(flags: int, devices, rs, present: bool, gen: str = "a", element_msgs=None) -> list[tuple]:
    """Replace table netdev cordon as a whole: flags, sets and the chains of every
    device. Goes into the batch that writes the inet table."""
    out = [("DELTABLE", 0, w.table_body(), NFPROTO_NETDEV)] if present else []
    out += sets_msgs(flags, rs, gen, element_msgs)
    for dev in devices:
        out += device_msgs(dev, rs.dhcp, gen, rs.dhcp_servers)
    return out


def swap_msgs(sock, devices, dhcp: bool, new: str, old: str, servers: tuple[str, ...] = ()) -> list[tuple]:
    """The swapping batch's part for a netdev table already in force whose sets of
    generation `new` are loaded: each device chain's rules are replaced by rules using
    them (chains stay hooked, so no packet meets an empty set), missing device chains
    are added, and the old sets deleted."""
    existing = {name for name, _a, _hook in table_chains(sock, NFPROTO_NETDEV)}
    out = []
    for dev in devices:
        if not all(chain_name(h, dev) in existing for h in ("ingress", "egress")):
            out += device_msgs(dev, dhcp, new, servers)
            continue
        for hook, rules in chain_rules(dhcp, new, servers).items():
            name = chain_name(hook, dev)
            out.append(("DELRULE", 0, w.chain_ref_body(name), NFPROTO_NETDEV))
            out += [("NEWRULE", w.NLM_F_CREATE | w.NLM_F_APPEND, _rule_body(name, t, e), NFPROTO_NETDEV)
                    for t, e, _ in rules]
    return out + [("DELSET", 0, w.set_name_body(n, old), NFPROTO_NETDEV) for n in SET_NAMES]


def delete_msgs() -> list[tuple]:
    return [("DELTABLE", 0, w.table_body(), NFPROTO_NETDEV)]


# --- text ----------------------------------------------------------------------------

def render_text(rs, devices, gen: str = "a") -> str:
    from platforms.nftables.render import set_text  # the inet table's set syntax
    lines = [f"table netdev {TABLE}", f"delete table netdev {TABLE}", f"table netdev {TABLE} {{"]
    lines += set_text(rs, gen)
    for dev in devices:
        for hook, rules in chain_rules(rs.dhcp, gen, rs.dhcp_servers).items():
            lines += [f"\tchain {chain_name(hook, dev)} {{",
                      f'\t\ttype filter hook {hook} device "{dev}" priority filter; policy drop;']
            lines += [f"\t\t{text}" for _, _, text in rules]
            lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- read-back -----------------------------------------------------------------------

def read_back(sock, flags_wanted: int, devices, dhcp: bool, gen: str,
              elements: dict | None = None, servers: tuple[str, ...] = (),
              hot: HotIndex | None = None, lapsing: dict | None = None) -> tuple[dict, list[str]]:
    """What table netdev cordon holds against what it must hold: flags (a dormant table
    is unhooked), one ingress and one egress chain per device with hook, priority,
    policy and device, every rule by tag and value, and every set's elements against
    `elements` (the inet table's, read back: the two must be copies, but for the
    elements of `lapsing`, {set: elements} due to time out now, which the kernel may
    have dropped between the two dumps)."""
    raw = sock.get("GETTABLE", w.table_body(), NFPROTO_NETDEV)
    if raw is None:
        return {"table": None}, [f"table netdev {TABLE} is missing"]
    flags, owner = w.table_flags_owner(raw)
    problems = []
    if flags & 1:
        problems.append(f"table netdev {TABLE} is dormant (unhooked)")
    if flags & w.TABLE_F_PERSIST != flags_wanted & w.TABLE_F_PERSIST:
        problems.append(f"table netdev {TABLE} flags {w.flag_names(flags)} differ from "
                        f"{w.flag_names(flags_wanted)}")
    chains = {name: hook_policy(a, hook) + (w.cstr(hook[NFTA_HOOK_DEV]) if NFTA_HOOK_DEV in hook else None,)
              for name, a, hook in table_chains(sock, NFPROTO_NETDEV)}
    want_rules = chain_rules(dhcp, gen, servers)
    expected = {chain_name(h, d): (HOOK_INGRESS if h == "ingress" else HOOK_EGRESS, 0, w.NF_DROP, d)
                for d in devices for h in want_rules}
    for name in sorted(set(expected) | set(chains)):
        if name not in chains:
            problems.append(f"netdev chain {name} is missing")
        elif name not in expected:
            if chains[name][3] is not None:  # a chain whose device went away holds no hook
                problems.append(f"netdev chain {name} is extra")
        elif chains[name] != expected[name]:
            problems.append(f"netdev chain {name}: hook/priority/policy/device {chains[name]} "
                            f"differ from {expected[name]}")
    seen: dict[str, list] = {}
    for payload in sock.dump("GETRULE", w.s(w.NFTA_RULE_TABLE, TABLE), NFPROTO_NETDEV):
        a = w.attr_map(payload)
        try:
            exprs = decode_list(a.get(w.NFTA_RULE_EXPRESSIONS, b""))
        except Undecodable:
            exprs = None
        seen.setdefault(w.cstr(a[w.NFTA_RULE_CHAIN]), []).append(
            (tag_of(a.get(w.NFTA_RULE_USERDATA)), exprs))
    for name in expected:
        hook = "ingress" if name.startswith("ingress_") else "egress"
        want = [(t, e) for t, e, _ in want_rules[hook]]
        if seen.get(name, []) != want:
            got = [t for t, _ in seen.get(name, [])]
            problems.append(f"netdev chain {name}: rules {got} differ from what Cordon installs")
    for name, want in (elements or {}).items():
        differ = set(set_elements(sock, name, gen, NFPROTO_NETDEV)) ^ set(want)
        if differ - set((lapsing or {}).get(name, ())):
            problems.append(f"netdev set {set_name(name, gen)}: elements differ from table inet {TABLE}'s")
    if elements is not None:
        problems += hot_problems(sock, gen, HotIndex(elements) if hot is None else hot, NFPROTO_NETDEV,
                                 f"netdev {TABLE}")
    details = {"table": f"netdev {TABLE}", "table_flags": w.flag_names(flags), "owner_portid": owner,
               "devices": sorted({v[3] for v in chains.values() if v[3]})}
    return details, problems
