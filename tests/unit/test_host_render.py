"""Host exceptions and expiring flows in every backend's rendering (DESIGN §11): the
plan is compiled from a config + policy + a DNS answer, and what each backend loads
(the fakes for pf, the eBPF-free filter text for WinDivert) allows exactly the answer's
addresses; nftables elements carry the flows' expiry as kernel timeouts."""
from __future__ import annotations

import math
import struct
import time

from hypothesis import given, settings, strategies as st

from agent.compile import compile_plan
from agent.config import Config
from agent.policy import validate_policy
from platforms.nftables import wire as w
from platforms.nftables.boxes import disjoint_timed
from platforms.nftables.render import build, render_text
from platforms.pf import PfBackend
from platforms.plan import HostAddresses
from platforms.windivert.filter import render as windivert_render
from tests.unit.fake_pfctl import FakePfctl

NOW = time.time()
NAME = "rmm.example.com"
ADDRS = ("203.0.113.20", "203.0.113.21")
CONFIG = Config.model_validate({"vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}],
                                           "dns_servers": ["192.0.2.53"], "dhcp": False}})
POLICY = validate_policy({"version": 1, "enabled": True,
                          "outbound": [{"protocol": "tcp", "host": NAME, "ports": "443"}],
                          "inbound": [{"protocol": "tcp", "address": "203.0.113.5", "ports": "22",
                                       "expires_at": "2099-01-01T00:00:00Z"}]})


def plan(addresses=ADDRS, ttl=30):
    answer = HostAddresses(NAME, addresses, NOW + ttl, None, ttl)
    return compile_plan(CONFIG, POLICY, "standard", {NAME: answer}, now=NOW)


def test_the_plan_holds_the_answer_with_its_expiry():
    p = plan()
    host_flows = [f for f in p.flows if f.host == NAME]
    assert sorted(f.network for f in host_flows) == [f"{a}/32" for a in ADDRS]
    assert {f.expires for f in host_flows} == {NOW + 30}
    assert p.host_lines()[0].startswith(f"host {NAME} -> 203.0.113.20, 203.0.113.21 (until ")


def test_nftables_elements_carry_kernel_timeouts():
    rs = build(plan())
    timed = rs.timeouts_ms("out_l4", now=NOW)
    keys = {el[0][0] for el in timed}
    assert keys == {int.from_bytes(bytes(map(int, a.split("."))), "big") for a in ADDRS}
    assert set(timed.values()) == {30_000}
    assert "out_l4" in rs.expires and rs.timeouts_ms("in_l4", now=NOW)  # expires_at: a timeout too
    forever = [el for el in rs.elements["out_l4"] if el not in timed]
    assert len(forever) == 3  # the vendor endpoint and DNS (udp, tcp) never expire
    text = render_text(rs, now=NOW)
    assert "flags interval,timeout" in text and "203.0.113.20 . 6 . 443 timeout 30000ms" in text


def test_the_netlink_element_carries_the_timeout_attribute():
    rs = build(plan())
    [body] = w.setelem_bodies("out_l4", rs.elements["out_l4"], "a", rs.timeouts_ms("out_l4", now=NOW))
    elements = w.attr_map(body)[w.NFTA_SET_ELEM_LIST_ELEMENTS]
    seen = []
    for _, elem in w.parse_attrs(elements):
        attrs = w.attr_map(elem)
        key = w.unpack_key(("ipv4_addr", "inet_proto", "inet_service"),
                           w.attr_map(attrs[w.NFTA_SET_ELEM_KEY])[w.NFTA_DATA_VALUE])
        seen.append((key[0], struct.unpack(">Q", attrs[w.NFTA_SET_ELEM_TIMEOUT])[0]
                      if w.NFTA_SET_ELEM_TIMEOUT in attrs else None))
    hosts = {int.from_bytes(bytes(map(int, a.split("."))), "big") for a in ADDRS}
    assert sorted(t for k, t in seen if k in hosts) == [30_000, 30_000]
    assert [t for k, t in seen if k not in hosts] == [None, None, None]


def test_nftables_rules_text_lists_names_and_addresses():
    from platforms.nftables import NftablesBackend
    text = NftablesBackend(state_dir=None).render(plan())
    assert f"# host {NAME} -> 203.0.113.20, 203.0.113.21" in text
    failed = compile_plan(CONFIG, POLICY, "standard", {NAME: HostAddresses(NAME, error="NXDOMAIN")}, now=NOW)
    assert f"# host {NAME} -> nothing (NXDOMAIN)" in NftablesBackend(state_dir=None).render(failed)


def test_pf_loads_the_current_addresses_and_names_them(tmp_path):
    fake = FakePfctl()
    backend = PfBackend(str(tmp_path), run=fake)
    assert f"# host {NAME} -> 203.0.113.20, 203.0.113.21" in backend.render(plan())
    backend.apply(plan())
    assert fake.verdict("out", "tcp", "203.0.113.20", 443, 50000, tcp_flags="S") == "pass"
    assert fake.verdict("out", "tcp", "203.0.113.22", 443, 50000, tcp_flags="S") == "block"
    backend.refresh(plan(addresses=("203.0.113.22",)))   # the answer changed
    assert fake.verdict("out", "tcp", "203.0.113.20", 443, 50000, tcp_flags="S") == "block"
    assert fake.verdict("out", "tcp", "203.0.113.22", 443, 50000, tcp_flags="S") == "pass"
    assert backend.read_back().enforces(plan(addresses=("203.0.113.22",)))


def test_windivert_filter_names_the_current_addresses():
    from platforms.windivert.backend import WinDivertBackend
    text = WinDivertBackend(state_dir=None).render(plan())
    assert f"# host {NAME} -> 203.0.113.20, 203.0.113.21" in text
    body = windivert_render(plan())
    assert "203.0.113.20" in body and "203.0.113.21" in body
    assert "203.0.113.22" not in windivert_render(plan(addresses=("203.0.113.23",)))


# --- disjoint boxes with expiries -----------------------------------------------------

NEVER = math.inf
box = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 12), st.integers(0, 12)) \
    .map(lambda t: (min(t[0], t[1]), max(t[0], t[1]), min(t[2], t[3]), max(t[2], t[3])))
expiry = st.one_of(st.none(), st.integers(1, 4).map(float))


def _latest(items) -> dict:
    """Per point, the latest expiry of any box covering it (the oracle)."""
    out: dict = {}
    for (a0, a1, b0, b1), e in items:
        lab = NEVER if e is None else e
        for a in range(a0, a1 + 1):
            for b in range(b0, b1 + 1):
                out[(a, b)] = max(out.get((a, b), -NEVER), lab)
    return out


@settings(max_examples=300)
@given(st.lists(st.tuples(box, expiry), max_size=7))
def test_disjoint_timed_keeps_each_point_as_long_as_its_longest_box(items):
    out = disjoint_timed(items)
    got: dict = {}
    for (a0, a1, b0, b1), e in out:
        for a in range(a0, a1 + 1):
            for b in range(b0, b1 + 1):
                assert (a, b) not in got, "two elements overlap"
                got[(a, b)] = NEVER if e is None else e
    assert got == _latest(items)


def _diff(old_plan, new_plan):
    from platforms.nftables.backend import NftablesBackend
    held = build(old_plan).elements  # the kernel holds the old plan's elements
    msgs = NftablesBackend._element_diff_msgs(build(old_plan), build(new_plan), "a", w.NFPROTO_INET,
                                              lambda name: set(held.get(name, ())))
    out = []
    for kind, _, body, _ in msgs:
        for _, elem in w.parse_attrs(w.attr_map(body).get(w.NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
            a = w.attr_map(elem)
            key = w.unpack_key(("ipv4_addr", "inet_proto", "inet_service"),
                               w.attr_map(a[w.NFTA_SET_ELEM_KEY])[w.NFTA_DATA_VALUE])
            out.append((kind, str(__import__("ipaddress").IPv4Address(key[0])), w.NFTA_SET_ELEM_TIMEOUT in a))
    return sorted(out)


def test_refresh_changes_only_the_elements_that_moved():
    old = plan(ttl=3000)  # far enough ahead that the module's NOW is still before it
    later = compile_plan(CONFIG, POLICY, "standard",
                         {NAME: HostAddresses(NAME, ("203.0.113.21", "203.0.113.22"), NOW + 6000, None, 3000)}, now=NOW)
    # 203.0.113.20 left the answer; .21 stayed with a later expiry; .22 is new. The vendor,
    # DNS and the expires_at exception are not touched. The moved element is deleted and
    # re-added in the same batch (never updated in place: see _element_diff_msgs).
    assert _diff(old, later) == [
        ("DELSETELEM", "203.0.113.20", False), ("DELSETELEM", "203.0.113.21", False),
        ("NEWSETELEM", "203.0.113.21", True), ("NEWSETELEM", "203.0.113.22", True)]
    assert _diff(old, old) == []
