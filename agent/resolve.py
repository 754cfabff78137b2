"""Resolving host exceptions (DESIGN §11): A records only, only through the configured
resolvers (`[vendor].dns_servers`, the only DNS isolation lets out), TTL clamped, at most
16 addresses per name. Anything but a usable answer (NXDOMAIN, SERVFAIL, no answer, a
timeout, only unusable addresses) allows nothing.

The answer is plain data (platforms.plan.HostAddresses) that the compiler puts into the
plan; DNS messages are parsed by dnspython, never by hand (the answers are hostile input).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from agent.fields import parse_address
from platforms.plan import HostAddresses

MAX_ADDRESSES = 16
MAX_TTL = 3600
QUERY_TIMEOUT_S = 2.0      # per server try
LIFETIME_S = 4.0           # per name, all servers and retries together
REFRESH_FRACTION = 0.75    # re-resolve when this much of the TTL has passed
MAX_PARALLEL = 8


def resolve(host: str, servers: tuple[str, ...], min_ttl: int = 30, now=time.time, port: int = 53) -> HostAddresses:
    """One name → its addresses (or the reason it allows nothing)."""
    if not servers:
        return HostAddresses(host, error="no [vendor].dns_servers configured")
    # Imported here, not at the top: dnspython costs ~2.7 MB of RSS that an agent whose
    # policy names no host never needs (DESIGN's 45 MB budget).
    import dns.exception
    import dns.name
    import dns.rdatatype
    import dns.resolver
    r = dns.resolver.Resolver(configure=False)  # never /etc/resolv.conf: only the pinned resolvers
    r.nameservers = list(servers)
    r.port = port
    r.timeout, r.lifetime = QUERY_TIMEOUT_S, LIFETIME_S
    r.cache = None
    started = now()
    try:
        answer = r.resolve(dns.name.from_text(host), dns.rdatatype.A, search=False,
                           raise_on_no_answer=True)
    except dns.resolver.NXDOMAIN:
        return HostAddresses(host, error="NXDOMAIN: the name does not exist")
    except dns.resolver.NoAnswer:
        return HostAddresses(host, error="no A records")
    except dns.resolver.NoNameservers as exc:
        return HostAddresses(host, error=f"no resolver answered usefully (SERVFAIL or refused): {_short(exc)}")
    except dns.resolver.LifetimeTimeout:
        return HostAddresses(host, error=f"timeout: no answer within {LIFETIME_S:g} s")
    except dns.exception.DNSException as exc:
        return HostAddresses(host, error=f"{type(exc).__name__}: {_short(exc)}")
    addresses: list[str] = []
    for rdata in answer.rrset or ():
        try:
            addr = parse_address(rdata.address, allow_cidr=False)
        except ValueError:
            continue  # 127.0.0.1, 0.0.0.0, multicast...: never an exception's peer
        if addr not in addresses:
            addresses.append(addr)
        if len(addresses) == MAX_ADDRESSES:
            break
    if not addresses:
        return HostAddresses(host, error="no usable A records (only loopback, multicast or reserved addresses)")
    ttl = min(rrset.ttl for rrset in answer.response.answer)  # a CNAME chain is as fresh as its shortest link
    ttl = max(min_ttl, min(MAX_TTL, ttl))
    return HostAddresses(host, tuple(addresses), started + ttl, None, ttl)


def _short(exc: Exception) -> str:
    return str(exc)[:200]


class HostTable:
    """The current answer for every name of the enforced policy; thread-safe. The agent
    resolves a name before the plan that needs it is applied, and again before its
    answer expires (`refresh_at`); a name that failed is tried again after the shortest
    TTL, and allows nothing meanwhile."""

    def __init__(self, servers: tuple[str, ...], min_ttl: int = 30, resolver=resolve, now=time.time) -> None:
        self.servers = tuple(servers)
        self.min_ttl = min_ttl
        self._resolve = resolver
        self._now = now
        self._answers: dict[str, tuple[float, HostAddresses]] = {}  # host -> (asked at, answer)
        self._lock = threading.Lock()

    def current(self) -> dict[str, HostAddresses]:
        with self._lock:
            return {h: a for h, (_, a) in self._answers.items()}

    def update(self, hosts, only=None, prune: bool = True) -> dict[str, HostAddresses]:
        """Resolve (in parallel) the `hosts` in `only` (default: all of them) and any not
        known yet; then, with `prune`, keep answers for `hosts` only. Returns the answers of
        the names resolved. Without `prune` a caller that resolved outside the engine lock
        cannot drop a name that a newer policy added meanwhile."""
        hosts = set(hosts)
        with self._lock:
            known = set(self._answers)
        ask = sorted((hosts if only is None else hosts & set(only)) | (hosts - known))
        asked_at = self._now()
        found: dict[str, HostAddresses] = {}
        if ask:
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(ask))) as pool:
                found = dict(zip(ask, pool.map(lambda h: self._resolve(h, self.servers, self.min_ttl), ask)))
        with self._lock:
            if prune:
                self._answers = {h: v for h, v in self._answers.items() if h in hosts}
            self._answers.update({h: (asked_at, a) for h, a in found.items()})
        return found

    def refresh_at(self) -> float | None:
        """When the next name should be resolved again."""
        with self._lock:
            times = [self._refresh_time(at, a) for at, a in self._answers.values()]
        return min(times) if times else None

    def due(self, at: float) -> list[str]:
        with self._lock:
            return sorted(h for h, (t, a) in self._answers.items() if self._refresh_time(t, a) <= at)

    def _refresh_time(self, asked_at: float, a: HostAddresses) -> float:
        if a.ttl is None:
            return asked_at + self.min_ttl
        return asked_at + a.ttl * REFRESH_FRACTION
