"""Can nftables run here, and what does this kernel support? Tried, never assumed.

is_supported() asks nf_tables over netlink in the caller's namespace (a binary on the
PATH proves nothing). probe_persist() creates a scratch table with the flags Cordon
wants in the target namespace, reads it back and deletes it.
"""
from __future__ import annotations

import errno
import sys

from platforms.base import BackendError, Probe, Support
from platforms.nftables import wire as w
from platforms.nftables.netlink import NetlinkFailure, NftSocket

PROBE_TABLE = "cordon_probe"
PERSIST = "table_owner_persist"


def is_supported(platform: str = sys.platform) -> Support:
    if not platform.startswith("linux"):
        return Support(False, f"nftables runs on Linux only (this is {platform})")
    try:
        sock = NftSocket(None)
    except OSError as exc:
        return Support(False, f"cannot open a netfilter netlink socket: {exc}")
    try:
        sock.get("GETTABLE", w.table_body())  # nfnetlink answers only with CAP_NET_ADMIN
    except BackendError as exc:
        return Support(False, f"nf_tables did not answer GETTABLE over netlink: {exc}")
    finally:
        sock.close()
    return Support(True, "nf_tables answered GETTABLE inet cordon over netlink")


def probe_persist(sock: NftSocket) -> Probe:
    """Table flags owner|persist (Linux >= 6.9): the owner flag keeps other processes from
    deleting the table while the agent lives, persist keeps it when the agent dies.
    Without persist an owned table would vanish with the agent (fail open)."""
    body = w.table_body(name=PROBE_TABLE)
    if sock.get("GETTABLE", body) is not None:  # left behind by a probe that died halfway
        sock.batch([("DELTABLE", 0, body)])
    wanted = w.flag_names(w.WANTED_TABLE_FLAGS)
    try:
        sock.batch([("NEWTABLE", w.NLM_F_CREATE, w.table_body(w.WANTED_TABLE_FLAGS, PROBE_TABLE))])
    except NetlinkFailure as exc:
        if exc.code not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return Probe(PERSIST, False, f"NEWTABLE inet {PROBE_TABLE} flags {'|'.join(wanted)} "
                                     f"refused by the kernel: {exc}")
    try:
        raw = sock.get("GETTABLE", body)
    finally:
        sock.batch([("DELTABLE", 0, body)])
    if raw is None:
        return Probe(PERSIST, False, f"table inet {PROBE_TABLE} was accepted but not found on read-back")
    flags, owner = w.table_flags_owner(raw)
    present = flags & w.WANTED_TABLE_FLAGS == w.WANTED_TABLE_FLAGS and owner == sock.portid
    return Probe(PERSIST, present,
                 f"created table inet {PROBE_TABLE} with flags {'|'.join(wanted)}; read back flags "
                 f"{'|'.join(w.flag_names(flags)) or 'none'}, owner port {owner} (this socket "
                 f"{sock.portid}); deleted")
