"""nf_tables kernel expressions as typed values: each encodes itself to netlink and
decodes from a kernel dump, so a read-back compares by value with what was sent.

Only the expressions Cordon uses exist here; anything else in a dump, and any attribute
an expression does not declare, is Undecodable: decoding is total, never skipping.
Attribute numbers are from include/uapi/linux/netfilter/nf_tables.h.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import ClassVar

from platforms.nftables import wire as w


class Undecodable(ValueError):
    """A kernel object that is not one of Cordon's vocabulary."""


# How one attribute is encoded and decoded, by kind.
_ENCODE = {
    "u32": w.u32,
    "u64": lambda num, v: w.attr(num, v.to_bytes(8, "big")),
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
    "u64": lambda raw: int.from_bytes(raw, "big") if len(raw) == 8 else _bad("u64", raw),
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


_PYTYPE = {"u32": int, "u64": int, "u8": int, "str": str, "data": bytes, "verdict": int}


def _expression(name: str, **attrs: tuple[int, str]) -> type[Expr]:
    """A frozen Expr dataclass with one typed field per attribute, `field=(attribute
    number, kind)`, in this order; a kind ending in "?" is optional (default None)."""
    spec, fields_ = [], []
    for fname, (num, kind) in attrs.items():
        base = kind.rstrip("?")
        spec.append((num, fname, base))
        fields_.append((fname, _PYTYPE[base] | None, field(default=None)) if kind.endswith("?")
                       else (fname, _PYTYPE[base]))
    cls = make_dataclass(name.capitalize(), fields_, bases=(Expr,), frozen=True,
                         namespace={"NAME": name, "ATTRS": tuple(spec)})
    cls.__module__ = __name__
    return cls


Meta = _expression("meta", dreg=(1, "u32"), key=(2, "u32"))
Cmp = _expression("cmp", sreg=(1, "u32"), op=(2, "u32"), data=(3, "data"))
Payload = _expression("payload", dreg=(1, "u32"), base=(2, "u32"), offset=(3, "u32"),
                      length=(4, "u32"))
Ct = _expression("ct", dreg=(1, "u32"), key=(2, "u32"), direction=(3, "u8?"))
Byteorder = _expression("byteorder", sreg=(1, "u32"), dreg=(2, "u32"), op=(3, "u32"),
                        length=(4, "u32"), size=(5, "u32"))
Bitwise = _expression("bitwise", sreg=(1, "u32"), dreg=(2, "u32"), length=(3, "u32"),
                      mask=(4, "data"), xor=(5, "data"), op=(6, "u32"))
Lookup = _expression("lookup", set=(1, "str"), sreg=(2, "u32"), flags=(5, "u32"))
Immediate = _expression("immediate", dreg=(1, "u32"), verdict=(2, "verdict"))
# `add @set { key }` from the packet path (op 0 add; timeout 0: the set's own). The
# kernel dumps timeout and flags even when nft sent neither, so they are always sent.
Dynset = _expression("dynset", set=(1, "str"), op=(3, "u32"), sreg_key=(4, "u32"),
                     timeout=(6, "u64"), flags=(9, "u32"))
DYNSET_ADD = 0

TYPES = {t.NAME: t for t in (Meta, Cmp, Payload, Ct, Byteorder, Bitwise, Lookup, Immediate, Dynset)}


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
