"""Hot sets: the read-back's check that a hot key lies in an element of its interval
set (oracle: every element tried, one by one), and the shape every cached lookup has
(hot, fill, interval, in that order, alike but for the set)."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from platforms.nftables.boxes import disjoint
from platforms.nftables.readback import _Stab
from platforms.nftables.render import chain_rules
from platforms.nftables.shape import HOT_SETS
from platforms.nftables.vocabulary import SetAdd, SetLookup

_span = st.tuples(st.integers(0, 40), st.integers(0, 12)).map(lambda t: (t[0], t[0] + t[1]))
_boxes = st.lists(st.tuples(_span, _span), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_boxes, st.lists(st.tuples(st.integers(0, 55), st.integers(0, 55)), min_size=1, max_size=20))
def test_a_key_is_held_exactly_when_some_element_holds_it(boxes, points):
    # elements as the renderer makes them: disjoint 2-field boxes, any order
    elements = [((a0, a1), (b0, b1)) for a0, a1, b0, b1 in disjoint([a + b for a, b in boxes])]
    index = _Stab(reversed(elements))
    for a, b in points:
        truth = any(a0 <= a <= a1 and b0 <= b <= b1 for (a0, a1), (b0, b1) in elements)
        assert index.holds(((a, a), (b, b))) == truth


def test_every_interval_lookup_of_bulk_traffic_has_a_hot_set_in_front():
    for chain, rules in chain_rules(True, ("192.0.2.1",)).items():
        tags = [r.tag for r in rules]
        for n, r in enumerate(rules):
            if not r.tag.endswith("-hot"):
                continue
            hot, fill, plain = rules[n:n + 3]
            base = r.tag[:-len("-hot")]
            assert (fill.tag, plain.tag) == (f"{base}-fill", base), tags
            lookup = plain.matches[-1]
            assert isinstance(lookup, SetLookup) and HOT_SETS[f"{lookup.base}_hot"] == lookup.base
            assert hot.matches == plain.matches[:-1] + (SetLookup(lookup.keys, f"{lookup.base}_hot"),)
            assert fill.matches == plain.matches + (SetAdd(lookup.keys, f"{lookup.base}_hot"),)
            assert hot.verdict == fill.verdict == plain.verdict == "accept"
        cached = {r.tag for r in rules if r.tag.endswith("-hot")}
        if chain != "forward":
            assert {"cordon/original-l4-hot", "cordon/reply-tcp-hot", "cordon/reply-udp-hot",
                    "cordon/original-l3-hot", "cordon/reply-l3-hot"} == cached
