"""Property tests: accepted policies round-trip and compile; rejected ones change nothing."""
import ipaddress
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.compile import compile_plan
from agent.config import parse_config
from agent.engine import Engine
from agent.errors import InvalidInput
from agent.log import null_logger
from agent.policy import validate_policy
from agent.store import Store
from tests.unit.memory_backend import MemoryBackend

CONFIG = parse_config({"vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}],
                                  "dns_servers": ["198.51.100.53"]}})


@st.composite
def addresses(draw):
    prefix = draw(st.integers(8, 32))
    base = draw(st.sampled_from(["192.0.2.0", "198.51.100.0", "203.0.113.0", "10.0.0.0", "172.16.0.0"]))
    host = ipaddress.ip_address(base) + draw(st.integers(0, 255))
    net = ipaddress.ip_network(f"{host}/{prefix}", strict=False)
    return str(net.network_address) if prefix == 32 else str(net)


@st.composite
def port_specs(draw):
    if draw(st.booleans()):
        return "any"
    starts = sorted(draw(st.sets(st.integers(1, 60000), min_size=1, max_size=5)))
    parts, last = [], 0
    for s in starts:
        if s <= last:
            continue
        end = min(65535, s + draw(st.integers(0, 3)))
        parts.append(str(s) if end == s else f"{s}-{end}")
        last = end
    return draw(st.sampled_from([", ".join(parts), parts]))


@st.composite
def entries(draw):
    protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
    e = {"protocol": protocol, "address": draw(addresses()),
         "ports": "any" if protocol == "icmp" else draw(port_specs())}
    if draw(st.booleans()):
        e["name"] = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64))
    if draw(st.booleans()):
        e["active"] = draw(st.booleans())
    return e


policies = st.fixed_dictionaries(
    {"version": st.integers(1, 10**6), "enabled": st.booleans(),
     "inbound": st.lists(entries(), max_size=6), "outbound": st.lists(entries(), max_size=6)})


@given(policies)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_accepted_policies_round_trip_and_compile(doc):
    try:
        p = validate_policy(doc)
    except InvalidInput as exc:
        # Only the cross-entry rules may reject a generated document.
        assert all(e.field == "enabled" or "duplicate" in e.reason for e in exc.errors), exc
        return
    again = validate_policy(json.loads(json.dumps(p.to_json())))
    assert again == p and again.to_json() == p.to_json()
    for mode in ("standard", "strict"):
        plan = compile_plan(CONFIG, p, mode)
        exceptions = plan.by_origin("exception")
        if mode == "strict" or not p.enabled:
            assert exceptions == ()
        else:
            active = [e for e in p.inbound + p.outbound if e.active]
            assert bool(exceptions) == bool(active)


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["version", "enabled", "inbound", "outbound", "protocol", "address", "ports", "name", "active", "x"]),
        children, max_size=5),
    max_leaves=20)


@given(junk)
@settings(max_examples=300, deadline=None)
def test_rejected_documents_leave_state_untouched(tmp_path_factory, doc):
    state_dir = tmp_path_factory.mktemp("state")
    store = Store(state_dir)
    backend = MemoryBackend()
    engine = Engine(CONFIG, store, backend, null_logger())
    engine.start()
    engine.set_policy({"version": 5, "enabled": True, "outbound": [{"protocol": "tcp", "address": "203.0.113.20", "ports": "any"}]}, {})
    engine.isolate("standard", None, {})
    before = store.path.read_bytes()
    rules_before = backend.installed
    try:
        engine.set_policy(doc, {})
    except InvalidInput:
        assert store.path.read_bytes() == before
        assert backend.installed == rules_before
