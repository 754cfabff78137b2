"""The fixed shape of Cordon's nftables table: its name, its sets and their key fields,
the chains and their hooks. Only set elements and the DHCP rules (their servers) change
with a plan."""
from __future__ import annotations

TABLE = "cordon"
PROTO_NUM = {"icmp": 1, "tcp": 6, "udp": 17}
PROTO_NAME = {v: k for k, v in PROTO_NUM.items()}
L4_FIELDS = ("ipv4_addr", "inet_proto", "inet_service")
L3_FIELDS = ("ipv4_addr", "inet_proto")
SET_FIELDS = {"out_l4": L4_FIELDS, "out_l3": L3_FIELDS, "in_l4": L4_FIELDS, "in_l3": L3_FIELDS}
# Each set above is an interval set (pipapo: its lookup costs as much as a 14% drop
# in allowed-flow throughput on this 2-core machine). Each has a hot set beside it: a
# hash of exact keys that packets fill themselves (`add @out_l4_hot_a { key }` in the
# rule that found the key in out_l4_a), which lapse HOT_TIMEOUT_MS after they went in
# and are never refreshed, so a key is judged against the interval set again at least
# that often. A rule looks in the hot set first. Hot sets belong to their generation
# (an update starts them empty) and a refresh flushes them in its batch; so only an
# element's own kernel timeout can outlive itself there, by at most HOT_TIMEOUT_MS.
def hot_set(base: str) -> str:
    return f"{base}_hot"


HOT_SETS = {hot_set(name): name for name in SET_FIELDS}  # hot set -> the set it caches
# 200 ms is whole jiffies at HZ 100, 250, 300 and 1000 (250 ms reads back as 248 at HZ
# 250). A full hot set only slows traffic down: the rule with the interval set follows.
HOT_TIMEOUT_MS, HOT_SIZE = 200, 1024
SET_NAMES = tuple(SET_FIELDS) + tuple(HOT_SETS)
FIELDS = {**SET_FIELDS, **{hot: SET_FIELDS[name] for hot, name in HOT_SETS.items()}}
# Sets exist in two generations, out_l4_a / out_l4_b: an update loads the other
# generation's sets first and then swaps the rules over to them (see backend.py).
GENERATIONS = ("a", "b")


def set_name(base: str, gen: str) -> str:
    return f"{base}_{gen}"


# The DHCP rules (inet): one to the broadcast address, one per leased server (numbered).
DHCP_BROADCAST_TAG, DHCP_SERVER_TAG = "cordon/dhcp-broadcast", "cordon/dhcp-server-"

CHAIN_HOOKS = {"input": "input", "output": "output", "forward": "forward"}
