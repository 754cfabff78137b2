"""Split the IPv4 address space into consecutive ranges, each small enough for one filter.

A WinDivert filter holds at most 256 objects, so a plan with many flows is enforced by
several DROP handles, one per address range ("partition"): each judges only packets whose
remote address lies in its range and lets every other packet go on to the others. A
packet must pass every handle, and exactly one handle's range holds its remote address,
so together they allow what the plan allows, no more (filter.py writes the texts).

Pure: items are (first, last, cost) address intervals; nothing here knows filters.
"""
from __future__ import annotations

from dataclasses import dataclass

ADDRESS_END = 2 ** 32 - 1


@dataclass(frozen=True)
class Partition:
    first: int                 # address range [first, last], inclusive
    last: int
    members: tuple[int, ...]   # indexes of the items whose interval meets the range


def _elementary(items: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The address space cut at every item's edges: within a piece, the same items."""
    cuts = {0, ADDRESS_END + 1}
    for first, last, _ in items:
        cuts.add(first)
        cuts.add(last + 1)
    points = sorted(cuts)
    return list(zip(points, (p - 1 for p in points[1:])))


def split(items: list[tuple[int, int, int]], capacity: int) -> list[Partition] | None:
    """Consecutive ranges covering the whole address space, each meeting items whose costs
    add up to at most `capacity`; greedy from the lowest address, so the ranges are as few
    as this order allows. None if one piece of the space alone is over `capacity` (items
    that overlap there cannot be told apart by address)."""
    pieces = _elementary(items)
    starts = sorted(range(len(items)), key=lambda i: items[i][0])
    active: set[int] = set()
    k = 0
    out: list[Partition] = []
    first, members, cost = 0, set(), 0
    for lo, hi in pieces:
        while k < len(starts) and items[starts[k]][0] <= lo:
            active.add(starts[k])
            k += 1
        active = {i for i in active if items[i][1] >= lo}
        here = sum(items[i][2] for i in active)
        if here > capacity:
            return None
        extra = sum(items[i][2] for i in active - members)
        if cost + extra > capacity:
            out.append(Partition(first, lo - 1, tuple(sorted(members))))
            first, members, cost = lo, set(active), here
        else:
            members |= active
            cost += extra
    out.append(Partition(first, ADDRESS_END, tuple(sorted(members))))
    return out
