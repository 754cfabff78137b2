"""The nftables vocabulary: every type decodes from its own encoding to the same value
(hypothesis), decoding is total (anything else is Undecodable), and the read-back
comparison names each rule that is missing, extra, foreign or undecodable."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from platforms.nftables import exprs as x
from platforms.nftables import wire as w
from platforms.nftables.readback import SeenRule, decode_seen, rule_problems
from platforms.nftables.render import chain_rules
from platforms.nftables.shape import SET_FIELDS
from platforms.nftables.vocabulary import (CtDirection, CtRelated, Family, Interface, IpAddr, Key, L4Proto,
                                           Rule, SetLookup, UdpPorts, decode_rule, tag_of, userdata)

u32 = st.integers(0, 2**32 - 1)
u8 = st.integers(0, 255)
data = st.binary(min_size=1, max_size=16)

EXPRS = st.one_of(
    st.builds(x.Meta, u32, u32), st.builds(x.Cmp, u32, u32, data),
    st.builds(x.Payload, u32, u32, u32, u32), st.builds(x.Ct, u32, u32, st.none() | u8),
    st.builds(x.Byteorder, u32, u32, u32, u32, u32), st.builds(x.Bitwise, u32, u32, u32, data, data, u32),
    st.builds(x.Lookup, st.text("abcdefgh_", min_size=1, max_size=20), u32, u32),
    st.builds(x.Immediate, u32, st.sampled_from([w.NF_ACCEPT, w.NF_DROP])))

MATCHES = st.one_of(
    st.builds(Interface, st.sampled_from(["iif", "oif"]), u32),
    st.builds(Family, st.sampled_from([2, 10])), st.builds(L4Proto, u8),
    st.builds(UdpPorts, st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(CtDirection, st.sampled_from([0, 1])), st.just(CtRelated()),
    st.builds(IpAddr, st.sampled_from([Key.IP_SADDR, Key.IP_DADDR]),
              st.ip_addresses(v=4).map(str)),
    st.builds(SetLookup, st.lists(st.sampled_from(list(Key)), min_size=1, max_size=3).map(tuple),
              st.sampled_from(sorted(SET_FIELDS))))

TAGS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40).map(lambda t: "cordon/" + t)
RULES = st.builds(Rule, TAGS, st.lists(MATCHES, max_size=4).map(tuple), st.sampled_from(["accept", "drop"]))


@given(st.lists(EXPRS, max_size=6))
def test_every_expression_decodes_from_its_encoding(exprs):
    assert x.decode_list(x.encode_list(exprs)) == exprs


@given(RULES, st.sampled_from(["a", "b"]))
def test_every_rule_decodes_from_its_encoding(rule, gen):
    exprs, udata = rule.encode(gen)
    assert decode_rule(exprs, udata, gen) == rule


@given(TAGS)
def test_tag_is_the_nft_comment_user_data(tag):
    assert tag_of(userdata(tag)) == tag


def test_cordon_rules_decode_with_the_kernel_s_ct_protocol_form():
    """The kernel dumps `ct protocol` without a direction; that still decodes."""
    for rules in chain_rules(True, ("192.0.2.1", "198.51.100.67")).values():
        for r in rules:
            exprs = [x.Ct(e.dreg, e.key) if isinstance(e, x.Ct) and e.key == 10 else e
                     for e in r.exprs("a")]
            assert decode_rule(x.encode_list(exprs), userdata(r.tag), "a") == r


def test_decoding_is_total():
    unknown = w.nest(w.NFTA_LIST_ELEM, w.s(w.NFTA_EXPR_NAME, "counter"), w.nest(w.NFTA_EXPR_DATA))
    with pytest.raises(x.Undecodable, match="counter"):
        x.decode_list(unknown)
    extra = w.nest(w.NFTA_LIST_ELEM, w.s(w.NFTA_EXPR_NAME, "meta"),
                   w.nest(w.NFTA_EXPR_DATA, w.u32(1, 1), w.u32(2, 16), w.u32(9, 0)))
    with pytest.raises(x.Undecodable, match="attribute 9"):
        x.decode_list(extra)
    rule = chain_rules(False)["input"][0]
    exprs, udata = rule.encode("a")
    with pytest.raises(x.Undecodable):
        decode_rule(exprs, udata, "b")  # its sets are of generation a
    with pytest.raises(x.Undecodable, match="no tag"):
        decode_rule(exprs, None, "a")


def test_text_carries_the_tag_as_comment():
    r = next(r for r in chain_rules(True, ("192.0.2.1",))["output"] if r.tag == "cordon/dhcp-server-1")
    assert r.text("b") == 'udp sport 68 udp dport 67 ip daddr 192.0.2.1 accept comment "cordon/dhcp-server-1"'


def _seen(rules, gen="a"):
    return {c: [decode_seen(*r.encode(gen), gen) for r in rs] for c, rs in rules.items()}


def test_read_back_names_missing_extra_foreign_and_undecodable_rules():
    expected = chain_rules(False)
    assert rule_problems(_seen(expected), expected) == []
    seen = _seen(expected)
    seen["input"].pop(0)
    seen["output"].append(seen["output"][0])
    accept_all = x.encode_list([x.Immediate(0, w.NF_ACCEPT)])
    seen["forward"] = [decode_seen(accept_all, None, "a"),
                       decode_seen(expected["input"][1].encode("b")[0], userdata("cordon/reply-tcp"), "a")]
    problems = rule_problems(seen, expected)
    assert "input: rule cordon/original-l4-hot: missing" in problems
    assert "output: rule cordon/original-l4-hot: extra" in problems
    assert "forward: foreign rule (immediate)" in problems
    assert any(p.startswith("forward: rule cordon/reply-tcp: undecodable") for p in problems)
    seen = _seen(expected)
    seen["input"].reverse()
    assert rule_problems(seen, expected)[0].startswith("input: rules out of order")
    seen = _seen(expected)
    lo = [r.tag for r in expected["input"]].index("cordon/loopback")
    seen["input"][lo] = SeenRule("cordon/loopback", Rule("cordon/loopback", (Interface("iif", 2),), "accept"))
    assert rule_problems(seen, expected) == ["input: rule cordon/loopback: differs from what Cordon installs"]
