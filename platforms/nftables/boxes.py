"""Make a list of 2-D boxes disjoint without changing their union.

An nftables interval set keyed by a concatenation (pipapo) refuses an element that
overlaps one already in it, so `/24 port 443` plus `/32 port 443` inside it must not
both go in. Boxes are (a_first, a_last, b_first, b_last), inclusive.

Boxes that overlap no other box come out unchanged, so a plan without overlaps is
installed element for element and reads back exactly as it was written.
"""
from __future__ import annotations

Box = tuple[int, int, int, int]


def disjoint(boxes) -> list[Box]:
    boxes = sorted(dict.fromkeys(boxes))  # keeps the input order: a sorted input sorts in one pass
    if all(x[1] < y[0] for x, y in zip(boxes, boxes[1:])):
        return boxes  # the usual case: no two boxes even share an address
    groups = _overlap_groups(boxes)
    out: list[Box] = []
    for group in groups:
        out.extend(group if len(group) == 1 else _split(group))
    return sorted(out)


def _overlaps(x: Box, y: Box) -> bool:
    return x[0] <= y[1] and y[0] <= x[1] and x[2] <= y[3] and y[2] <= x[3]


def _overlap_groups(boxes: list[Box]) -> list[list[Box]]:
    """Connected groups of mutually overlapping boxes (union-find over a sweep on a)."""
    parent = list(range(len(boxes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    active: list[int] = []  # indices whose a-interval may still reach the next box
    for i, box in enumerate(boxes):
        active = [j for j in active if boxes[j][1] >= box[0]]
        for j in active:
            if _overlaps(boxes[j], box):
                parent[find(i)] = find(j)
        active.append(i)
    groups: dict[int, list[Box]] = {}
    for i, box in enumerate(boxes):
        groups.setdefault(find(i), []).append(box)
    return list(groups.values())


def _union(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for first, last in sorted(intervals):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return tuple((f, l) for f, l in merged)


def _split(group: list[Box]) -> list[Box]:
    """Cut the a-axis at every box edge; in each slice the b-intervals are merged;
    neighbouring slices with the same b-intervals are joined again."""
    cuts = sorted({b[0] for b in group} | {b[1] + 1 for b in group})
    slices: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
    for lo, nxt in zip(cuts, cuts[1:]):
        hi = nxt - 1
        covering = [(b[2], b[3]) for b in group if b[0] <= lo and hi <= b[1]]
        if not covering:
            continue
        bs = _union(covering)
        if slices and slices[-1][1] + 1 == lo and slices[-1][2] == bs:
            slices[-1] = (slices[-1][0], hi, bs)
        else:
            slices.append((lo, hi, bs))
    return [(lo, hi, b0, b1) for lo, hi, bs in slices for b0, b1 in bs]


NEVER = float("inf")


def disjoint_timed(items) -> list[tuple[Box, float | None]]:
    """`disjoint` for boxes that stop at a time: items are (box, expires or None for
    never). Every point of the union comes out in exactly one box, which lasts as long
    as the longest-lasting input box covering it, so an element's kernel timeout never
    cuts short a flow that another, longer one also allows."""
    label: dict[Box, float] = {}
    for box, expires in items:
        lab = NEVER if expires is None else expires
        label[box] = max(label.get(box, -NEVER), lab)
    boxes = sorted(label)
    if all(x[1] < y[0] for x, y in zip(boxes, boxes[1:])):
        groups = [[b] for b in boxes]
    else:
        groups = _overlap_groups(boxes)
    out: list[tuple[Box, float]] = []
    for group in groups:
        out.extend([(group[0], label[group[0]])] if len(group) == 1 else _split_timed(group, label))
    return sorted((box, None if lab == NEVER else lab) for box, lab in out)


def _split_timed(group: list[Box], label: dict[Box, float]) -> list[tuple[Box, float]]:
    """As _split, with each b-segment labelled by the latest expiry covering it."""
    cuts = sorted({b[0] for b in group} | {b[1] + 1 for b in group})
    slices: list[tuple[int, int, tuple]] = []
    for lo, nxt in zip(cuts, cuts[1:]):
        hi = nxt - 1
        covering = [(b[2], b[3], label[b]) for b in group if b[0] <= lo and hi <= b[1]]
        if not covering:
            continue
        segs = _latest_segments(covering)
        if slices and slices[-1][1] + 1 == lo and slices[-1][2] == segs:
            slices[-1] = (slices[-1][0], hi, segs)
        else:
            slices.append((lo, hi, segs))
    return [((lo, hi, b0, b1), lab) for lo, hi, segs in slices for b0, b1, lab in segs]


def _latest_segments(intervals) -> tuple[tuple[int, int, float], ...]:
    cuts = sorted({f for f, _, _ in intervals} | {l + 1 for _, l, _ in intervals})
    segs: list[tuple[int, int, float]] = []
    for lo, nxt in zip(cuts, cuts[1:]):
        hi = nxt - 1
        labs = [lab for f, l, lab in intervals if f <= lo and hi <= l]
        if not labs:
            continue
        lab = max(labs)
        if segs and segs[-1][1] + 1 == lo and segs[-1][2] == lab:
            segs[-1] = (segs[-1][0], hi, lab)
        else:
            segs.append((lo, hi, lab))
    return tuple(segs)
