"""Config + policy + mode → Plan. The only place that knows how the documents map to flows."""
from __future__ import annotations

from agent.config import Config
from agent.fields import port_ranges
from platforms.plan import DNS_PORT, Flow, HostAddresses, Mode, Plan, PortRange
from agent.policy import Policy

_DIRECTIONS = {"outbound": "out", "inbound": "in"}


def _flows(direction: str, protocol: str, address: str, ports: str, origin: str, name: str,
           host: str = "", expires: float | None = None) -> list[Flow]:
    network = address if "/" in address else f"{address}/32"
    ranges = port_ranges(ports)
    # "any" protocol with a port list means those ports over tcp and udp; backends
    # never see "any" together with ports.
    protocols = ("tcp", "udp") if protocol == "any" and ranges else (protocol,)
    return [Flow(direction, p, network, ranges, origin, name, host, expires) for p in protocols]  # type: ignore[arg-type]


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def compile_plan(config: Config, policy: Policy | None, mode: Mode,
                 hosts: dict[str, HostAddresses] | None = None, now: float | None = None,
                 dhcp_servers: tuple[str, ...] = ()) -> Plan:
    """`hosts`: the current answer per DNS name of the policy's host exceptions (a name
    without one allows nothing); `now`: exceptions whose expires_at is not after it are
    left out (None: all are kept, as for `cordon rules`); `dhcp_servers`: the servers of
    the host's DHCP leases (agent/dhcp_leases.py), kept only when DHCP is on."""
    hosts = hosts or {}
    flows: list[Flow] = []
    for ep in config.vendor.endpoints:
        flows += _flows("out", ep.protocol, ep.address, ep.ports, "vendor", ep.name or f"vendor {ep.address}")
    for server in config.vendor.dns_servers:
        for proto in ("udp", "tcp"):
            flows.append(Flow("out", proto, f"{server}/32", (PortRange(DNS_PORT, DNS_PORT),), "dns", f"dns {server}"))
    use_exceptions = mode == "standard" and policy is not None and policy.enabled
    shown: dict[str, HostAddresses] = {}
    if use_exceptions:
        for list_name, direction in _DIRECTIONS.items():
            for entry in policy.active(list_name):
                ends = entry.expires_epoch()
                if now is not None and ends is not None and ends <= now:
                    continue  # expired: no longer enforced
                label = entry.label(list_name)
                if entry.host is None:
                    flows += _flows(direction, entry.protocol, entry.address, entry.ports, "exception", label,
                                    expires=ends)
                    continue
                answer = hosts.get(entry.host) or HostAddresses(entry.host, error="not resolved yet")
                shown[entry.host] = answer
                for address in answer.addresses:
                    flows += _flows(direction, entry.protocol, address, entry.ports, "exception", label,
                                    entry.host, _earliest(ends, answer.expires))
    plan = Plan(
        mode=mode,
        flows=_merged(flows),
        dhcp=config.vendor.dhcp,
        policy_version=policy.version if (policy is not None and mode == "standard") else None,
        hosts=tuple(shown[h] for h in sorted(shown)),
        dhcp_servers=tuple(dhcp_servers) if config.vendor.dhcp else (),
    )
    return plan if now is None else plan.lapsed(now)  # an answer's TTL may have run out


def _merged(flows: list[Flow]) -> tuple[Flow, ...]:
    """Sorted and without duplicates; of equal flows the one that lasts longest stays."""
    best: dict[Flow, Flow] = {}
    for f in flows:
        kept = best.get(f)
        if kept is None or (kept.expires is not None and (f.expires is None or f.expires > kept.expires)):
            best[f] = f
    return tuple(best[f] for f in sorted(best))


def check_enforceable(config: Config, backend: str | None = None) -> None:
    """The config's vendor channel must fit the backend's own limits (e.g. the WinDivert
    filter size): render the strict plan (pure, nothing installed) and turn a refusal into
    invalid config naming vendor.endpoints. Used by load_config and `cordon rules`, so
    that `status`, `rules`, `run` and `config check` agree on what is valid."""
    from agent.errors import FieldError, InvalidInput
    from platforms import backend_class
    from platforms.base import BackendUnavailable
    try:
        cls = backend_class(backend or config.backend)
    except BackendUnavailable:
        return  # cannot run here: `run` says so; `rules --backend` names it
    try:
        cls(state_dir=None).render(compile_plan(config, None, "strict"))
    except (ValueError, RuntimeError) as exc:
        raise InvalidInput(FieldError("vendor.endpoints", f"too many for the {cls.name} backend: {exc}"),
                           "config") from None
