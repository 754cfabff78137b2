"""The address ranges the WinDivert plan is split over (platforms/windivert/partition.py):
they cover the whole IPv4 space without overlap, each range lists exactly the items that
meet it, and no range's items cost more than the capacity. Checked by brute force here."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from platforms.windivert.partition import ADDRESS_END, split


def _item(draw_lo, width, cost):
    return (draw_lo, min(ADDRESS_END, draw_lo + width), cost)


items_st = st.lists(st.builds(_item, st.integers(0, ADDRESS_END), st.sampled_from([0, 0, 1, 255, 65535, 2 ** 24]),
                              st.integers(1, 40)), max_size=40)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(items=items_st, capacity=st.integers(40, 200))
def test_ranges_cover_the_space_and_hold_exactly_their_items(items, capacity):
    parts = split(items, capacity)
    # Over capacity where items overlap (the most is at some item's first address): no split.
    worst = max((sum(c for lo, hi, c in items if lo <= x <= hi) for x, _, _ in items), default=0)
    assert (parts is None) == (worst > capacity)
    if parts is None:
        return
    assert parts[0].first == 0 and parts[-1].last == ADDRESS_END
    for a, b in zip(parts, parts[1:]):
        assert b.first == a.last + 1          # contiguous, disjoint
    for p in parts:
        assert p.first <= p.last
        meets = {i for i, (lo, hi, _) in enumerate(items) if lo <= p.last and hi >= p.first}
        assert set(p.members) == meets
        assert sum(items[i][2] for i in p.members) <= capacity


def test_overlapping_items_over_capacity_cannot_be_split():
    same = [(100, 100, 30)] * 3
    assert split(same, 80) is None
    assert len(split(same, 90)) == 1


def test_no_items_is_one_range():
    (p,) = split([], 10)
    assert (p.first, p.last, p.members) == (0, ADDRESS_END, ())
