"""Probe verdicts with the guest as one end, with the netns tier's rules
(tests/harness/probe.py): ALLOWED = the nonce made the round trip; BLOCKED = no round trip,
the receiver's responder never saw the nonce, AND right afterwards the receiver answers
the same protocol/port from a path isolation does not cross (a peer: from the router
namespace; the guest: from its own loopback); anything else is ERROR.

Round trips that start in the guest run there as one batch (tests/vm/inguest/probe_batch.py,
which is the harness's own round_trip); the rest run here. A batch costs one guest command
for the outbound probes, one for the guest's liveness checks, and about one timeout.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

from tests.harness.lab import load_factor
from tests.harness.probe import (ALLOWED, BLOCKED, ERROR, LocalError, Probe, Result, _control,
                                 new_nonce, round_trip)

from .lab import GUEST, GUEST_TEST_DIR

MISSING = 3  # the guest has no file for this probe set yet


def guest_round_trips(lab, items: list[dict], timeout: float) -> list[str | None]:
    """items: {addr, proto, port, family, nonce, sport}; returns None (round trip) or a reason.
    The probes without their nonces are a file in the guest, written once per distinct set
    (a story probes the same set again and again); each batch sends only the nonces, so a
    batch is one short line on the console instead of many long ones."""
    if not items:
        return []
    static = json.dumps([{k: v for k, v in it.items() if k != "nonce"} for it in items], sort_keys=True)
    path = f"{GUEST_TEST_DIR}/batches/{hashlib.sha256(static.encode()).hexdigest()[:16]}.json"
    nonces = ",".join(it["nonce"] for it in items)
    run = (f"cd {GUEST_TEST_DIR} && [ -f {path} ] || exit {MISSING}; "
           f"python3 -m tests.vm.inguest.probe_batch {path} {timeout:.3f} {nonces}")
    rc, out, err = lab.guest.execute(run, timeout=60 + timeout)
    if rc == MISSING:  # first use of this set, or a new disk: write it, then run
        lab.guest.succeed(f"mkdir -p {GUEST_TEST_DIR}/batches && cat > {path}.tmp <<'EOF'\n{static}\nEOF\n"
                          f"mv {path}.tmp {path}")
        rc, out, err = lab.guest.execute(run, timeout=60 + timeout)
    if rc != 0:
        return [f"LOCAL guest probe batch exited {rc}: {err.strip()[-300:]}"] * len(items)
    return json.loads(out)


async def _in_guest(lab, items, timeout):
    return await asyncio.get_running_loop().run_in_executor(None, guest_round_trips, lab, items, timeout)


async def _host_trip(lab, ns, addr, p: Probe, nonce, timeout, sport=None):
    try:
        return await round_trip(ns, addr, p.proto, p.port, p.family, nonce, timeout, sport)
    except LocalError as e:
        return f"LOCAL {e}"


async def _probe_many(lab, probes: list[Probe], timeout: float) -> list[Result]:
    t0 = time.monotonic()
    ask = 3.0 * load_factor()  # a SEEN over the guest's serial port: slower on a busy machine
    nonces = {p: new_nonce() for p in probes}
    out_g = [p for p in probes if p.src == GUEST]
    inbound = [p for p in probes if p.src != GUEST]
    if any(p.dst != GUEST for p in inbound):
        raise ValueError("the VM lab probes only to and from the guest")
    g_items = [{"addr": lab.addr(p.dst, p.family), "proto": p.proto, "port": p.port,
                "family": p.family, "nonce": nonces[p], "sport": p.sport} for p in out_g]
    g_task = asyncio.ensure_future(_in_guest(lab, g_items, timeout))
    h_fails = await asyncio.gather(*(_host_trip(lab, lab.ns(p.src), lab.addr(GUEST, p.family), p,
                                                nonces[p], timeout, p.sport) for p in inbound))
    fails = dict(zip(inbound, h_fails)) | dict(zip(out_g, await g_task))

    failed = [p for p in probes if fails[p] is not None and not str(fails[p]).startswith("LOCAL")]
    seen = dict(zip(failed, await asyncio.gather(
        *(_control(lab.ctl_path(p.dst), f"SEEN {nonces[p]}", ask) for p in failed))))

    # Liveness of the receivers that saw nothing: one check per (host, proto, port, family).
    need = sorted({(p.dst, p.proto, p.port, p.family) for p in failed if seen[p] == "NO"},
                  key=lambda k: (k[0], k[1], k[2] or 0, k[3]))
    alive_nonce = {k: new_nonce() for k in need}
    peer_keys = [k for k in need if k[0] != GUEST]
    guest_keys = [k for k in need if k[0] == GUEST]
    g_alive = asyncio.ensure_future(_in_guest(lab, [
        {"addr": "127.0.0.1" if k[3] == 4 else "::1", "proto": k[1], "port": k[2], "family": k[3],
         "nonce": alive_nonce[k], "sport": None} for k in guest_keys], timeout))
    p_alive = await asyncio.gather(*(_host_trip(lab, *lab.vantage(k[0], k[3]), Probe("router", k[0], k[1], k[2], k[3]),
                                                alive_nonce[k], timeout) for k in peer_keys))
    alive_fail = dict(zip(peer_keys, p_alive)) | dict(zip(guest_keys, await g_alive))
    ok_alive = [k for k in need if alive_fail[k] is None]
    recorded = dict(zip(ok_alive, await asyncio.gather(
        *(_control(lab.ctl_path(k[0]), f"SEEN {alive_nonce[k]}", ask) for k in ok_alive))))

    secs = round(time.monotonic() - t0, 3)
    results = []
    for p in probes:
        fail = fails[p]
        if fail is None:
            results.append(Result(p, ALLOWED, "round trip", secs))
        elif str(fail).startswith("LOCAL"):
            results.append(Result(p, ERROR, f"probe not sent: {fail[6:]}", secs))
        elif seen[p] is None:
            results.append(Result(p, ERROR, f"{fail}; receiver's responder does not answer (dead?)", secs))
        elif seen[p] == "YES":
            results.append(Result(p, ERROR, f"{fail}; but the receiver got the nonce (reply lost: "
                                            f"one-way leak)", secs))
        else:
            k = (p.dst, p.proto, p.port, p.family)
            dead = alive_fail[k] or (None if recorded.get(k) == "YES" else
                                     "echo came back but the responder did not record it")
            if dead:
                results.append(Result(p, ERROR, f"{fail}; receiver not shown alive afterwards ({dead})", secs))
            else:
                results.append(Result(p, BLOCKED, f"{fail}; receiver saw nothing and is alive", secs))
    return results


def vm_probes(lab, probes, timeout: float = 2.0) -> list[Result]:
    """Results in the order of `probes`. `timeout` is for an idle machine and scales with
    the load, as in the netns tier (tests/harness/probe.run_probes)."""
    return asyncio.run(_probe_many(lab, list(probes), timeout * load_factor()))
