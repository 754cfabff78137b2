"""Cordon's nftables rule vocabulary: every match a Cordon rule uses, as a frozen
dataclass with typed fields. Each renders itself to nft text, lowers itself to the
kernel expressions `nft -f` generates for that text (encode), and is recognised back
from a kernel dump (decode). A Rule carries a tag, stored as its nft comment, which is
the same user-data bytes in text and in netlink, so a read-back names the rule.
"""
from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass
from typing import ClassVar, Literal

from platforms.nftables import wire as w
from platforms.nftables.exprs import (DYNSET_ADD, Bitwise, Byteorder, Cmp, Ct, Dynset, Expr, Immediate,
                                      Lookup, Meta, Payload, Undecodable, decode_list, encode_list)
from platforms.nftables.shape import HOT_SETS, PROTO_NAME, set_name

REG_VERDICT, REG_1, REG32_00 = 0, 1, 8
META_KEY = {"iif": 4, "oif": 5, "nfproto": 15, "l4proto": 16}
CT_STATE, CT_DIRECTION = 0, 1
CT_RELATED = 4
NFT_CMP_EQ, NFT_CMP_NEQ = 0, 1
FAMILY_NAME = {2: "ipv4", 10: "ipv6"}
TAG_PREFIX = "cordon/"
UDATA_RULE_COMMENT = 0  # libnftnl NFTNL_UDATA_RULE_COMMENT: type, length, NUL-ended text


class Key(enum.Enum):
    """A key of a set lookup; the value is its nft text."""
    IP_SADDR = "ip saddr"
    IP_DADDR = "ip daddr"
    L4PROTO = "meta l4proto"
    TH_DPORT = "th dport"
    CT_ORIG_SADDR = "ct original ip saddr"
    CT_ORIG_DADDR = "ct original ip daddr"
    CT_ORIG_PROTO = "ct original protocol"
    CT_ORIG_PROTO_DST = "ct original proto-dst"


# ct keys (NFT_CT_*): src_ip 19, dst_ip 20, protocol 10, proto_dst 12
_CT_KEYS = {Key.CT_ORIG_SADDR: 19, Key.CT_ORIG_DADDR: 20, Key.CT_ORIG_PROTO: 10,
            Key.CT_ORIG_PROTO_DST: 12}
_IP_OFFSET = {Key.IP_SADDR: 12, Key.IP_DADDR: 16}


def _eq(data: bytes) -> Cmp:
    return Cmp(REG_1, NFT_CMP_EQ, data)


def key_exprs(key: Key, reg: int, first: bool, interval: bool = True, again: bool = False) -> list[Expr]:
    """What nft loads for one key of a concatenation into `reg`. `interval`: the key goes
    to an interval set; `again`: the rule has loaded the same key before (in a lookup),
    so nft adds no IPv4 dependency."""
    if key in _IP_OFFSET:
        dependency = [] if again else [Meta(REG_1, META_KEY["nfproto"]), _eq(b"\x02")]
        return dependency + [Payload(reg, 1, _IP_OFFSET[key], 4)]
    if key is Key.L4PROTO:
        # for an interval set nft converts the 1-byte proto of a register after the first
        return [Meta(reg, META_KEY["l4proto"])] + ([] if first or not interval else [Byteorder(reg, reg, 1, 1, 2)])
    if key is Key.TH_DPORT:
        return [Payload(reg, 2, 2, 2)]
    return [Ct(reg, _CT_KEYS[key], 0)]


class Match:
    """One condition of a rule. Subclasses: text(gen), exprs(gen) and a classmethod
    take(exprs, i, gen) -> (match, next i) or None."""

    ORDER: ClassVar[int]


@dataclass(frozen=True)
class Interface(Match):
    """iif / oif: the packet's interface index (lo is 1 in every namespace)."""
    direction: Literal["iif", "oif"]
    index: int

    def text(self, gen: str) -> str:
        return f'{self.direction} "lo"' if self.index == 1 else f"{self.direction} {self.index}"

    def exprs(self, gen: str) -> list[Expr]:
        return [Meta(REG_1, META_KEY[self.direction]), _eq(struct.pack("=I", self.index))]

    @classmethod
    def take(cls, ex, i, gen):
        for d in ("iif", "oif"):
            if ex[i:i + 1] == [Meta(REG_1, META_KEY[d])] and _is_eq(ex, i + 1, 4):
                return cls(d, struct.unpack("=I", ex[i + 1].data)[0]), i + 2
        return None


@dataclass(frozen=True)
class Family(Match):
    """meta nfproto: 2 ipv4, 10 ipv6."""
    family: int

    def text(self, gen: str) -> str:
        return f"meta nfproto {FAMILY_NAME[self.family]}"

    def exprs(self, gen: str) -> list[Expr]:
        return [Meta(REG_1, META_KEY["nfproto"]), _eq(bytes([self.family]))]

    @classmethod
    def take(cls, ex, i, gen):
        if ex[i:i + 1] == [Meta(REG_1, META_KEY["nfproto"])] and _is_eq(ex, i + 1, 1) \
                and ex[i + 1].data[0] in FAMILY_NAME:
            return cls(ex[i + 1].data[0]), i + 2
        return None


@dataclass(frozen=True)
class L4Proto(Match):
    """meta l4proto: 1 icmp, 6 tcp, 17 udp."""
    proto: int

    def text(self, gen: str) -> str:
        return f"meta l4proto {PROTO_NAME.get(self.proto, self.proto)}"

    def exprs(self, gen: str) -> list[Expr]:
        return [Meta(REG_1, META_KEY["l4proto"]), _eq(bytes([self.proto]))]

    @classmethod
    def take(cls, ex, i, gen):
        if ex[i:i + 1] == [Meta(REG_1, META_KEY["l4proto"])] and _is_eq(ex, i + 1, 1):
            return cls(ex[i + 1].data[0]), i + 2
        return None


@dataclass(frozen=True)
class UdpPorts(Match):
    """udp sport S udp dport D (DHCP)."""
    sport: int
    dport: int

    def text(self, gen: str) -> str:
        return f"udp sport {self.sport} udp dport {self.dport}"

    def exprs(self, gen: str) -> list[Expr]:
        return [Meta(REG_1, META_KEY["l4proto"]), _eq(b"\x11"), Payload(REG_1, 2, 0, 4),
                _eq(struct.pack(">HH", self.sport, self.dport))]

    @classmethod
    def take(cls, ex, i, gen):
        if ex[i:i + 3] == [Meta(REG_1, META_KEY["l4proto"]), _eq(b"\x11"), Payload(REG_1, 2, 0, 4)] \
                and _is_eq(ex, i + 3, 4):
            return cls(*struct.unpack(">HH", ex[i + 3].data)), i + 4
        return None


@dataclass(frozen=True)
class IpAddr(Match):
    """ip saddr A / ip daddr A: one IPv4 address (the DHCP server or the broadcast)."""
    key: Key  # Key.IP_SADDR or Key.IP_DADDR
    address: str

    def text(self, gen: str) -> str:
        return f"{self.key.value} {self.address}"

    def exprs(self, gen: str) -> list[Expr]:
        return key_exprs(self.key, REG_1, True) + [_eq(socket.inet_aton(self.address))]

    @classmethod
    def take(cls, ex, i, gen):
        for key in _IP_OFFSET:
            head = key_exprs(key, REG_1, True)
            if ex[i:i + len(head)] == head and _is_eq(ex, i + len(head), 4):
                return cls(key, socket.inet_ntoa(ex[i + len(head)].data)), i + len(head) + 1
        return None


@dataclass(frozen=True)
class CtDirection(Match):
    """ct direction original (0) / reply (1)."""
    direction: int

    def text(self, gen: str) -> str:
        return "ct direction " + ("original", "reply")[self.direction]

    def exprs(self, gen: str) -> list[Expr]:
        return [Ct(REG_1, CT_DIRECTION), _eq(bytes([self.direction]))]

    @classmethod
    def take(cls, ex, i, gen):
        if ex[i:i + 1] == [Ct(REG_1, CT_DIRECTION)] and _is_eq(ex, i + 1, 1) and ex[i + 1].data[0] < 2:
            return cls(ex[i + 1].data[0]), i + 2
        return None


@dataclass(frozen=True)
class CtRelated(Match):
    """ct state related."""

    def text(self, gen: str) -> str:
        return "ct state related"

    def exprs(self, gen: str) -> list[Expr]:
        zero = b"\0\0\0\0"
        return [Ct(REG_1, CT_STATE), Bitwise(REG_1, REG_1, 4, struct.pack("=I", CT_RELATED), zero, 0),
                Cmp(REG_1, NFT_CMP_NEQ, zero)]

    @classmethod
    def take(cls, ex, i, gen):
        return (cls(), i + 3) if ex[i:i + 3] == cls().exprs(gen) else None


@dataclass(frozen=True)
class SetLookup(Match):
    """k1 . k2 ... @set: the concatenated keys are in set `base` of generation gen."""
    keys: tuple[Key, ...]
    base: str

    def text(self, gen: str) -> str:
        return f"{' . '.join(k.value for k in self.keys)} @{set_name(self.base, gen)}"

    def exprs(self, gen: str) -> list[Expr]:
        return _load_keys(self.keys, self.base not in HOT_SETS, False) + [Lookup(set_name(self.base, gen), REG_1, 0)]

    @classmethod
    def take(cls, ex, i, gen):
        j = _next(ex, i, Lookup)
        if j is None or ex[j].sreg != REG_1 or ex[j].flags != 0 or not ex[j].set.endswith(f"_{gen}"):
            return None
        base = ex[j].set[:-len(gen) - 1]
        keys = _keys_of(ex[i:j], base not in HOT_SETS, False)
        return (cls(keys, base), j + 1) if keys else None


@dataclass(frozen=True)
class SetAdd(Match):
    """add @set { k1 . k2 ... }: the packet puts its keys into (hot) set `base` of
    generation gen, with the set's own timeout; always holds unless the set is full."""
    keys: tuple[Key, ...]
    base: str

    def text(self, gen: str) -> str:
        return f"add @{set_name(self.base, gen)} {{ {' . '.join(k.value for k in self.keys)} }}"

    def exprs(self, gen: str) -> list[Expr]:
        return _load_keys(self.keys, False, True) + [Dynset(set_name(self.base, gen), DYNSET_ADD, REG_1, 0, 0)]

    @classmethod
    def take(cls, ex, i, gen):
        j = _next(ex, i, Dynset)
        if j is None or ex[j] != Dynset(ex[j].set, DYNSET_ADD, REG_1, 0, 0) or not ex[j].set.endswith(f"_{gen}"):
            return None
        keys = _keys_of(ex[i:j], False, True)
        return (cls(keys, ex[j].set[:-len(gen) - 1]), j + 1) if keys else None


def _load_keys(keys, interval: bool, again: bool) -> list[Expr]:
    out: list[Expr] = []
    for n, key in enumerate(keys):
        out += key_exprs(key, REG_1 if n == 0 else REG32_00 + n, n == 0, interval, again)
    return out


def _next(ex, i: int, kind: type) -> int | None:
    return next((j for j in range(i, len(ex)) if isinstance(ex[j], kind)), None)


def _keys_of(ex, interval: bool, again: bool) -> tuple[Key, ...]:
    """The concatenation keys that `ex` (all of it) loads, or () if it is anything else."""
    keys, j = [], 0
    while j < len(ex):
        n = len(keys)
        reg = REG_1 if n == 0 else REG32_00 + n
        for key in Key:
            want = _normal(key_exprs(key, reg, n == 0, interval, again))
            if _normal(ex[j:j + len(want)]) == want:
                keys.append(key)
                j += len(want)
                break
        else:
            return ()
    return tuple(keys)


def _is_eq(ex, i: int, size: int) -> bool:
    return i < len(ex) and isinstance(ex[i], Cmp) and ex[i].sreg == REG_1 \
        and ex[i].op == NFT_CMP_EQ and len(ex[i].data) == size


def _normal(exprs) -> list:
    """The kernel keeps no direction for `ct protocol` (the same both ways)."""
    return [Ct(e.dreg, e.key) if isinstance(e, Ct) and e.key == _CT_KEYS[Key.CT_ORIG_PROTO] else e
            for e in exprs]


# Tried in this order: a lookup's keys, DHCP's ports and an address start like simpler
# matches (a lookup keyed by ip saddr starts like IpAddr, but IpAddr needs a cmp next).
MATCHES = (SetLookup, SetAdd, UdpPorts, IpAddr, Interface, Family, L4Proto, CtDirection, CtRelated)
VERDICTS = {"accept": w.NF_ACCEPT, "drop": w.NF_DROP}


@dataclass(frozen=True)
class Rule:
    """Matches (all must hold), a verdict and the tag that names this rule."""
    tag: str
    matches: tuple[Match, ...]
    verdict: Literal["accept", "drop"]

    def text(self, gen: str = "a") -> str:
        return " ".join([m.text(gen) for m in self.matches] + [self.verdict, f'comment "{self.tag}"'])

    def exprs(self, gen: str = "a") -> list[Expr]:
        out = [e for m in self.matches for e in m.exprs(gen)]
        return out + [Immediate(REG_VERDICT, VERDICTS[self.verdict])]

    def encode(self, gen: str = "a") -> tuple[bytes, bytes]:
        """(NFTA_RULE_EXPRESSIONS payload, NFTA_RULE_USERDATA payload)."""
        return encode_list(self.exprs(gen)), userdata(self.tag)


def userdata(tag: str) -> bytes:
    text = tag.encode() + b"\0"
    return bytes([UDATA_RULE_COMMENT, len(text)]) + text


def tag_of(udata: bytes | None) -> str | None:
    """The comment of a rule's user data, or None when it has none."""
    off, data = 0, udata or b""
    while off + 2 <= len(data):
        kind, size = data[off], data[off + 1]
        if kind == UDATA_RULE_COMMENT:
            return data[off + 2:off + 2 + size].split(b"\0", 1)[0].decode(errors="replace")
        off += 2 + size
    return None


def decode_rule(exprs_payload: bytes, udata: bytes | None, gen: str) -> Rule:
    """The Rule a kernel dump holds; Undecodable if any part is not Cordon's vocabulary."""
    ex = decode_list(exprs_payload)
    tag = tag_of(udata)
    if tag is None:
        raise Undecodable("rule has no tag")
    if not ex or not isinstance(ex[-1], Immediate) or ex[-1].dreg != REG_VERDICT \
            or ex[-1].verdict not in VERDICTS.values():
        raise Undecodable(f"rule {tag!r} does not end in accept or drop")
    verdict = "accept" if ex[-1].verdict == w.NF_ACCEPT else "drop"
    matches, i = [], 0
    while i < len(ex) - 1:
        for kind in MATCHES:
            got = kind.take(ex[:-1], i, gen)
            if got is not None:
                matches.append(got[0])
                i = got[1]
                break
        else:
            raise Undecodable(f"rule {tag!r}: expression {i} ({ex[i].NAME}) starts no Cordon match")
    return Rule(tag, tuple(matches), verdict)
