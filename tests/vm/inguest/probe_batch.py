"""Run inside the guest: round trips from the guest itself, the harness's own code
(tests.harness.probe.round_trip) with sockets made in the guest's only namespace.

    python3 -m tests.vm.inguest.probe_batch BASE64(JSON [{addr, proto, port, family,
        nonce, timeout, sport}, ...])  ->  JSON [null | "reason" | "LOCAL reason", ...]
    python3 -m tests.vm.inguest.probe_batch FILE TIMEOUT NONCE,NONCE,...
        (FILE: the same list without nonce and timeout; the i-th nonce goes with the i-th item)
"""
import asyncio
import base64
import json
import socket
import sys

from tests.harness import netns
from tests.harness.probe import LocalError, round_trip

netns.socket_in = lambda ns, family, type, proto=0: socket.socket(family, type, proto)


async def main(items):
    async def one(it):
        try:
            return await round_trip(None, it["addr"], it["proto"], it.get("port"), it["family"],
                                          it["nonce"], it["timeout"], it.get("sport"))
        except LocalError as e:
            return f"LOCAL {e}"
    return await asyncio.gather(*(one(it) for it in items))


def items_from(argv):
    if len(argv) == 1:
        return json.loads(base64.b64decode(argv[0]))
    path, timeout, nonces = argv
    with open(path) as f:
        items = json.load(f)
    nonces = nonces.split(",")
    if len(nonces) != len(items):
        sys.exit(f"{len(nonces)} nonces for {len(items)} probes in {path}")
    return [dict(it, nonce=n, timeout=float(timeout)) for it, n in zip(items, nonces)]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(items_from(sys.argv[1:])))))
