"""Linux backend: one nftables table `inet cordon`, installed through netlink.

Modules, in the order data flows through them:
  shape.py       the table's fixed shape: name, sets and their key fields, chains
  boxes.py       pure geometry: overlapping address x port boxes -> disjoint set elements
  vocabulary.py  the typed rule vocabulary: each match renders nft text, lowers itself to
                 kernel expressions and is recognised back from a dump; rules are tagged
  exprs.py       the kernel expressions themselves, typed, encode and decode
  render.py      Plan -> Ruleset (set elements + the tagged rules) and the nft text
  wire.py        nf_tables netlink message bodies (the hand-written fast encoder)
  netlink.py     the netfilter netlink socket: one batch per change, every ack read
  readback.py    the kernel's table decoded and compared by tag with the render
  probe.py       is nftables usable here, does the kernel keep owner|persist (tried)
  backend.py     NftablesBackend: apply / clear / read_back / wait_for_change
"""
from platforms.nftables.backend import NftablesBackend

__all__ = ["NftablesBackend"]
