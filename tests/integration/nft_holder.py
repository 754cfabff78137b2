"""Run the nftables backend as its own process inside a namespace and keep its netlink
socket (the table's owner) open until killed:

    ip netns exec NS python -m tests.integration.nft_holder < plan.json

Prints one JSON line {"portid": N, "readback": {...}} once the plan is in force."""
from __future__ import annotations

import json
import sys
import time

from platforms.plan import Plan
from platforms.nftables import NftablesBackend


def main() -> None:
    plan = Plan.from_json(json.load(sys.stdin))
    backend = NftablesBackend()
    backend.apply(plan)
    rb = backend.read_back()
    print(json.dumps({"portid": backend.portid, "digest": rb.digest, "details": rb.details}),
          flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
