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
# Sets exist in two generations, out_l4_a / out_l4_b: an update loads the other
# generation's sets first and then swaps the rules over to them (see backend.py).
GENERATIONS = ("a", "b")


def set_name(base: str, gen: str) -> str:
    return f"{base}_{gen}"


# The DHCP rules (inet): one to the broadcast address, one per leased server (numbered).
DHCP_BROADCAST_TAG, DHCP_SERVER_TAG = "cordon/dhcp-broadcast", "cordon/dhcp-server-"

CHAIN_HOOKS = {"input": "input", "output": "output", "forward": "forward"}
