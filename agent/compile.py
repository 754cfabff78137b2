"""Config + policy + mode → Plan. The only place that knows how the documents map to flows."""
from __future__ import annotations

from agent.config import Config
from agent.fields import port_ranges
from platforms.plan import DNS_PORT, Flow, Mode, Plan, PortRange
from agent.policy import Policy

_DIRECTIONS = {"outbound": "out", "inbound": "in"}


def _flows(direction: str, protocol: str, address: str, ports: str, origin: str, name: str) -> list[Flow]:
    network = address if "/" in address else f"{address}/32"
    ranges = port_ranges(ports)
    # "any" protocol with a port list means those ports over tcp and udp; backends
    # never see "any" together with ports.
    protocols = ("tcp", "udp") if protocol == "any" and ranges else (protocol,)
    return [Flow(direction, p, network, ranges, origin, name) for p in protocols]  # type: ignore[arg-type]


def compile_plan(config: Config, policy: Policy | None, mode: Mode) -> Plan:
    flows: list[Flow] = []
    for ep in config.vendor.endpoints:
        flows += _flows("out", ep.protocol, ep.address, ep.ports, "vendor", ep.name or f"vendor {ep.address}")
    for server in config.vendor.dns_servers:
        for proto in ("udp", "tcp"):
            flows.append(Flow("out", proto, f"{server}/32", (PortRange(DNS_PORT, DNS_PORT),), "dns", f"dns {server}"))
    use_exceptions = mode == "standard" and policy is not None and policy.enabled
    if use_exceptions:
        for list_name, direction in _DIRECTIONS.items():
            for entry in policy.active(list_name):
                flows += _flows(direction, entry.protocol, entry.address, entry.ports, "exception", entry.label(list_name))
    return Plan(
        mode=mode,
        flows=tuple(sorted(set(flows))),
        dhcp=config.vendor.dhcp,
        policy_version=policy.version if (policy is not None and mode == "standard") else None,
    )


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
