"""nf_tables netlink wire format: attribute encoding/decoding and Cordon's messages.

Encoded by hand (a few struct.pack calls) because one isolation change is one batch of
thousands of set elements, and it must be built in milliseconds. Constants are from the
kernel uapi (include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h).
"""
from __future__ import annotations

import functools
import socket
import struct

from platforms.nftables.shape import FIELDS, HOT_SETS, HOT_SIZE, HOT_TIMEOUT_MS, SET_FIELDS, SET_NAMES, TABLE, set_name

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFPROTO_INET = 1
NFNLGRP_NFTABLES = 7

MSG = {"NEWTABLE": 0, "GETTABLE": 1, "DELTABLE": 2, "NEWCHAIN": 3, "GETCHAIN": 4,
       "NEWRULE": 6, "GETRULE": 7, "DELRULE": 8, "NEWSET": 9, "GETSET": 10, "DELSET": 11,
       "NEWSETELEM": 12, "GETSETELEM": 13, "DELSETELEM": 14, "NEWGEN": 15}
MSG_NAME = {v: k for k, v in MSG.items()}

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_CREATE, NLM_F_EXCL, NLM_F_APPEND = 0x400, 0x200, 0x800
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000

TABLE_F_OWNER, TABLE_F_PERSIST = 0x2, 0x4
WANTED_TABLE_FLAGS = TABLE_F_OWNER | TABLE_F_PERSIST
TABLE_FLAG_NAMES = {1: "dormant", TABLE_F_OWNER: "owner", TABLE_F_PERSIST: "persist"}
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFTA_TABLE_OWNER = 1, 2, 7
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 1, 3, 4, 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN = 1, 2, 3, 4, 5
NFTA_SET_DESC, NFTA_SET_ID, NFTA_SET_TIMEOUT = 9, 10, 11
NFTA_SET_DESC_SIZE, NFTA_SET_DESC_CONCAT, NFTA_SET_FIELD_LEN = 1, 2, 1
SET_F_INTERVAL, SET_F_TIMEOUT, SET_F_EVAL, SET_F_CONCAT = 0x4, 0x10, 0x20, 0x80
# Every set takes element timeouts (host exceptions and expires_at, DESIGN §11);
# elements without one never expire.
SET_FLAGS = SET_F_INTERVAL | SET_F_TIMEOUT | SET_F_CONCAT
HOT_SET_FLAGS = SET_F_TIMEOUT | SET_F_EVAL  # exact keys (a hash), filled by packets
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_EXPIRATION, NFTA_SET_ELEM_KEY_END = 1, 4, 5, 10
NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE = 1, 2, 1
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2

HOOKS = {"input": 1, "forward": 2, "output": 3}
NF_DROP, NF_ACCEPT = 0, 1
# nft datatype ids, combined for concatenations as (t1 << 6 | t2) << 6 | t3 ...
DTYPE = {"ipv4_addr": 7, "inet_proto": 12, "inet_service": 13}
FIELD_LEN = {"ipv4_addr": 4, "inet_proto": 1, "inet_service": 2}
SET_IDS = {name: i + 1 for i, name in enumerate(SET_NAMES)}
ELEMENTS_PER_MSG = 1000  # a nested attribute is at most 64 KiB


# --- attributes ----------------------------------------------------------------------

def attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return head + payload + b"\0" * (-len(payload) % 4)


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind, b"".join(parts), nested=True)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">I", value & 0xFFFFFFFF))


def s(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def parse_attrs(data: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out.append((kind & 0x3FFF, data[off + 4:off + length]))
        off += (length + 3) & ~3
    return out


def attr_map(data: bytes) -> dict[int, bytes]:
    return dict(parse_attrs(data))


def be32(data: bytes) -> int:
    return struct.unpack(">I", data[:4])[0]


def cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode()


# --- messages ------------------------------------------------------------------------

def message(msg_type: int, flags: int, seq: int, body: bytes, family: int = NFPROTO_INET,
            subsys: bool = True, res_id: int = 0) -> bytes:
    kind = (NFNL_SUBSYS_NFTABLES << 8 | msg_type) if subsys else msg_type
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def batch_marker(msg_type: int, seq: int) -> bytes:
    return message(msg_type, NLM_F_REQUEST, seq, b"", family=0, subsys=False,
                   res_id=NFNL_SUBSYS_NFTABLES)


def table_body(flags: int | None = None, name: str = TABLE) -> bytes:
    body = s(NFTA_TABLE_NAME, name)
    return body + (u32(NFTA_TABLE_FLAGS, flags) if flags is not None else b"")


def table_flags_owner(raw: bytes) -> tuple[int, int | None]:
    """A GETTABLE answer's flags and owner port id (None when the table has no owner)."""
    t = attr_map(raw)
    flags = be32(t.get(NFTA_TABLE_FLAGS, b"\0\0\0\0"))
    owner = be32(t[NFTA_TABLE_OWNER]) if flags & TABLE_F_OWNER and NFTA_TABLE_OWNER in t else None
    return flags, owner


def flag_names(flags: int) -> list[str]:
    return [n for bit, n in TABLE_FLAG_NAMES.items() if flags & bit]


def chain_body(name: str) -> bytes:
    hook = nest(NFTA_CHAIN_HOOK, u32(NFTA_HOOK_HOOKNUM, HOOKS[name]), u32(NFTA_HOOK_PRIORITY, 0))
    return (s(NFTA_CHAIN_TABLE, TABLE) + s(NFTA_CHAIN_NAME, name) + hook
            + u32(NFTA_CHAIN_POLICY, NF_DROP) + s(NFTA_CHAIN_TYPE, "filter"))


def set_body(name: str, gen: str, table: str = TABLE) -> bytes:
    """NEWSET of `name` (an interval set of SET_FIELDS, or one of their HOT_SETS)."""
    fields = FIELDS[name]
    key_type = 0
    for f in fields:
        key_type = key_type << 6 | DTYPE[f]
    head = (s(NFTA_SET_TABLE, table) + s(NFTA_SET_NAME, set_name(name, gen))
            + u32(NFTA_SET_FLAGS, set_flags(name))
            + u32(NFTA_SET_KEY_TYPE, key_type) + u32(NFTA_SET_KEY_LEN, 4 * len(fields))
            + u32(NFTA_SET_ID, SET_IDS[name] + (len(SET_IDS) if gen == "b" else 0)))
    if name in HOT_SETS:
        return (head + attr(NFTA_SET_TIMEOUT, struct.pack(">Q", HOT_TIMEOUT_MS))
                + nest(NFTA_SET_DESC, u32(NFTA_SET_DESC_SIZE, HOT_SIZE)))
    concat = b"".join(nest(NFTA_LIST_ELEM, u32(NFTA_SET_FIELD_LEN, FIELD_LEN[f])) for f in fields)
    return head + nest(NFTA_SET_DESC, nest(NFTA_SET_DESC_CONCAT, concat))


def set_flags(name: str) -> int:
    return HOT_SET_FLAGS if name in HOT_SETS else SET_FLAGS



def pack_key(fields, values) -> bytes:
    """One concatenation key; every field takes a whole 32-bit register."""
    out = b""
    for f, v in zip(fields, values):
        if f == "ipv4_addr":
            out += struct.pack(">I", v)
        elif f == "inet_service":
            out += struct.pack(">H", v) + b"\0\0"
        else:
            out += struct.pack("B", v) + b"\0\0\0"
    return out


def unpack_key(fields, data: bytes) -> tuple[int, ...]:
    vals = []
    for i, f in enumerate(fields):
        chunk = data[4 * i:4 * i + 4]
        vals.append(struct.unpack(">I", chunk)[0] if f == "ipv4_addr"
                    else struct.unpack(">H", chunk[:2])[0] if f == "inet_service" else chunk[0])
    return tuple(vals)


_KEY_STRUCTS = {3: struct.Struct(">IBxxxHxx"), 2: struct.Struct(">IBxxx")}


def setelem_bodies(name: str, elements, gen: str, timeouts_ms: dict | None = None,
                   table: str = TABLE) -> list[bytes]:
    """NEWSETELEM/DELSETELEM bodies; `timeouts_ms`: element -> kernel timeout (ms) for
    the elements that expire."""
    fields = SET_FIELDS[name]
    head = set_ref_body(name, gen, table)
    key = _KEY_STRUCTS[len(fields)]
    klen = 4 + key.size  # NFTA_DATA_VALUE attribute
    # Attribute headers are host order, key values network order: pack them apart,
    # once per element, since a 10,000-exception plan has 20,000 of these.
    elem_h = struct.pack("=HH", 4 + 2 * (4 + klen), NFTA_LIST_ELEM | NLA_F_NESTED)
    start_h = struct.pack("=HHHH", 4 + klen, NFTA_SET_ELEM_KEY | NLA_F_NESTED, klen, NFTA_DATA_VALUE)
    end_h = struct.pack("=HHHH", 4 + klen, NFTA_SET_ELEM_KEY_END | NLA_F_NESTED, klen,
                        NFTA_DATA_VALUE)
    pack, head_s = key.pack, elem_h + start_h
    if len(fields) == 3:  # unrolled: a generator per key was half of this function's time
        encoded = [head_s + pack(a[0], p[0], b[0]) + end_h + pack(a[1], p[1], b[1]) for a, p, b in elements]
    else:
        encoded = [head_s + pack(a[0], p[0]) + end_h + pack(a[1], p[1]) for a, p in elements]
    if timeouts_ms:
        timed_h = struct.pack("=HH", 4 + 2 * (4 + klen) + 12, NFTA_LIST_ELEM | NLA_F_NESTED)
        for i, el in enumerate(elements):
            if el in timeouts_ms:
                encoded[i] = (timed_h + encoded[i][4:]
                              + struct.pack("=HH", 12, NFTA_SET_ELEM_TIMEOUT) + struct.pack(">Q", timeouts_ms[el]))
    return [head + nest(NFTA_SET_ELEM_LIST_ELEMENTS, *encoded[i:i + ELEMENTS_PER_MSG])
            for i in range(0, len(encoded), ELEMENTS_PER_MSG)]


def chain_ref_body(chain: str) -> bytes:
    return s(NFTA_RULE_TABLE, TABLE) + s(NFTA_RULE_CHAIN, chain)


def set_name_body(name: str, gen: str) -> bytes:
    return s(NFTA_SET_TABLE, TABLE) + s(NFTA_SET_NAME, set_name(name, gen))


def set_ref_body(name: str, gen: str, table: str = TABLE) -> bytes:
    return s(NFTA_SET_ELEM_LIST_TABLE, table) + s(NFTA_SET_ELEM_LIST_SET, set_name(name, gen))


@functools.lru_cache(maxsize=256)
def rule_body(chain: str, rule, gen: str) -> bytes:
    """`rule`: a vocabulary.Rule (frozen, so the few distinct bodies are kept); it
    encodes its own expressions and tag."""
    exprs, udata = rule.encode(gen)
    return (s(NFTA_RULE_TABLE, TABLE) + s(NFTA_RULE_CHAIN, chain)
            + nest(NFTA_RULE_EXPRESSIONS, exprs) + attr(NFTA_RULE_USERDATA, udata))
