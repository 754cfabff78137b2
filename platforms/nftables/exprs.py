"""nf_tables kernel expressions as typed values: each encodes itself to netlink and
decodes from a kernel dump, so a read-back compares by value with what was sent.

Only the expressions Cordon uses exist here; anything else in a dump, and any attribute
an expression does not declare, is Undecodable: decoding is total, never skipping.
Attribute numbers are from include/uapi/linux/netfilter/nf_tables.h.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from platforms.nftables import wire as w


class Undecodable(ValueError):
    """A kernel object that is not one of Cordon's vocabulary."""


# How one attribute is encoded and decoded, by kind.
_ENCODE = {
    "u32": w.u32,
    "u8": lambda num, v: w.attr(num, bytes([v])),
    "str": w.s,
    "data": lambda num, v: w.nest(num, w.attr(w.NFTA_DATA_VALUE, v)),
    "verdict": lambda num, v: w.nest(num, w.nest(w.NFTA_DATA_VERDICT, w.u32(w.NFTA_VERDICT_CODE, v))),
}


def _only(raw: bytes, kind: int) -> bytes:
    attrs = w.parse_attrs(raw)
    if [k for k, _ in attrs] != [kind]:
        raise Undecodable(f"expected one attribute {kind}, got {[k for k, _ in attrs]}")
    return attrs[0][1]


_DECODE = {
    "u32": lambda raw: w.be32(raw) if len(raw) == 4 else _bad("u32", raw),
    "u8": lambda raw: raw[0] if len(raw) == 1 else _bad("u8", raw),
    "str": w.cstr,
    "data": lambda raw: _only(raw, w.NFTA_DATA_VALUE),
    "verdict": lambda raw: w.be32(_only(_only(raw, w.NFTA_DATA_VERDICT), w.NFTA_VERDICT_CODE)),
}


def _bad(kind: str, raw: bytes):
    raise Undecodable(f"{kind} attribute of {len(raw)} bytes")


@dataclass(frozen=True)
class Expr:
    NAME: ClassVar[str]
    ATTRS: ClassVar[tuple[tuple[int, str, str], ...]]  # (attribute number, field, kind)

    def encode(self) -> bytes:
        data = [_ENCODE[kind](num, getattr(self, name)) for num, name, kind in self.ATTRS
                if getattr(self, name) is not None]
        return w.nest(w.NFTA_LIST_ELEM, w.s(w.NFTA_EXPR_NAME, self.NAME),
                      w.nest(w.NFTA_EXPR_DATA, *data))

    @classmethod
    def from_data(cls, data: bytes) -> "Expr":
        by_num = {num: (name, kind) for num, name, kind in cls.ATTRS}
        values = {}
        for num, raw in w.parse_attrs(data):
            if num not in by_num or by_num[num][0] in values:
                raise Undecodable(f"{cls.NAME}: unexpected attribute {num}")
            name, kind = by_num[num]
            values[name] = _DECODE[kind](raw)
        missing = [f.name for f in fields(cls) if f.default is not None and f.name not in values]
        if missing:
            raise Undecodable(f"{cls.NAME}: missing {missing}")
        return cls(**values)


@dataclass(frozen=True)
class Meta(Expr):
    NAME = "meta"
    ATTRS = ((1, "dreg", "u32"), (2, "key", "u32"))
    dreg: int
    key: int


@dataclass(frozen=True)
class Cmp(Expr):
    NAME = "cmp"
    ATTRS = ((1, "sreg", "u32"), (2, "op", "u32"), (3, "data", "data"))
    sreg: int
    op: int
    data: bytes


@dataclass(frozen=True)
class Payload(Expr):
    NAME = "payload"
    ATTRS = ((1, "dreg", "u32"), (2, "base", "u32"), (3, "offset", "u32"), (4, "length", "u32"))
    dreg: int
    base: int
    offset: int
    length: int


@dataclass(frozen=True)
class Ct(Expr):
    NAME = "ct"
    ATTRS = ((1, "dreg", "u32"), (2, "key", "u32"), (3, "direction", "u8"))
    dreg: int
    key: int
    direction: int | None = None


@dataclass(frozen=True)
class Byteorder(Expr):
    NAME = "byteorder"
    ATTRS = ((1, "sreg", "u32"), (2, "dreg", "u32"), (3, "op", "u32"), (4, "length", "u32"),
             (5, "size", "u32"))
    sreg: int
    dreg: int
    op: int
    length: int
    size: int


@dataclass(frozen=True)
class Bitwise(Expr):
    NAME = "bitwise"
    ATTRS = ((1, "sreg", "u32"), (2, "dreg", "u32"), (3, "length", "u32"), (4, "mask", "data"),
             (5, "xor", "data"), (6, "op", "u32"))
    sreg: int
    dreg: int
    length: int
    mask: bytes
    xor: bytes
    op: int


@dataclass(frozen=True)
class Lookup(Expr):
    NAME = "lookup"
    ATTRS = ((1, "set", "str"), (2, "sreg", "u32"), (5, "flags", "u32"))
    set: str
    sreg: int
    flags: int


@dataclass(frozen=True)
class Immediate(Expr):
    NAME = "immediate"
    ATTRS = ((1, "dreg", "u32"), (2, "verdict", "verdict"))
    dreg: int
    verdict: int


TYPES = {t.NAME: t for t in (Meta, Cmp, Payload, Ct, Byteorder, Bitwise, Lookup, Immediate)}


def encode_list(exprs) -> bytes:
    return b"".join(e.encode() for e in exprs)


def decode_list(data: bytes) -> list[Expr]:
    """A rule's NFTA_RULE_EXPRESSIONS as typed expressions; Undecodable if any is unknown."""
    out = []
    for _, elem in w.parse_attrs(data):
        a = w.attr_map(elem)
        name = w.cstr(a.get(w.NFTA_EXPR_NAME, b""))
        if name not in TYPES:
            raise Undecodable(f"expression {name!r} is not Cordon's")
        out.append(TYPES[name].from_data(a.get(w.NFTA_EXPR_DATA, b"")))
    return out
