"""Linux backend: one nftables table `inet cordon`, installed through netlink.

Modules, in the order data flows through them:
  boxes.py    pure geometry: overlapping address x port boxes -> disjoint set elements
  render.py   Plan -> Ruleset (sets, chains, rules) and the nft text `cordon rules` prints
  wire.py     nf_tables netlink message bodies (encode) and attribute parsing (decode)
  netlink.py  the netfilter netlink socket: one batch per change, every ack read
  backend.py  NftablesBackend: apply / clear / read_back / wait_for_change
"""
from platforms.nftables.backend import NftablesBackend

__all__ = ["NftablesBackend"]
