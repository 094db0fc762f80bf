"""The hypervolume of maximised objectives, the search's one measure of a front.

Points are ``(accuracy, throughput)`` pairs, both maximised, and the reference point is
(0, 0): accuracy and throughput are non-negative, so the hypervolume only grows as the search
improves. In two objectives the dominated region is a staircase, measured exactly by one sweep.
A study of several targets ranks rung results by accuracy and every target's throughput
(``(accuracy, throughput_1, ..., throughput_N)``): there the volume is cut into slabs along
the last objective, each measured one dimension lower (exact; rungs hold tens of points).
:func:`hypervolume` is the front's area (the progress metric the driver logs and ``search status``
prints); :func:`hypervolume_contributions` is each point's exclusive share of it (what successive
halving ranks a front by, :mod:`search.core.scheduler`). Optuna has no public hypervolume
function (its own is private); the tests check these against it.
"""
from __future__ import annotations

from typing import Sequence


def hypervolume(points: Sequence[Sequence[float]]) -> float:
    """Volume that ``points`` dominate above the reference point (0, ..., 0); dominated points
    and duplicates add nothing. A point below the reference (a negative objective) is a ValueError."""
    if any(not all(v >= 0 for v in point) for point in points):
        raise ValueError(f"hypervolume: every point must dominate the reference point (0, ...), got {list(points)}")
    if points and len(points[0]) > 2:
        return _slabs(points)
    area = covered = 0.0
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):  # best first objective first
        if y > covered:
            area += x * (y - covered)  # the strip this point adds above those already swept
            covered = y
    return area


def _slabs(points: Sequence[Sequence[float]]) -> float:
    """The volume of three or more objectives: between consecutive values of the last
    objective, the slab's height times the volume the points reaching that high dominate in
    the other objectives."""
    levels = sorted({point[-1] for point in points}, reverse=True)
    volume = 0.0
    for high, low in zip(levels, levels[1:] + [0.0]):
        volume += (high - low) * hypervolume([point[:-1] for point in points if point[-1] >= high])
    return volume


def hypervolume_contributions(points: Sequence[Sequence[float]]) -> list[float]:
    """Each point's exclusive share of a mutually non-dominated set's hypervolume.

    The reference point is (0, ..., 0), the study's own hypervolume reference (accuracy and
    throughput are non-negative). In two objectives a contribution is a product of two gaps
    (in more, what the volume loses without the point), so scaling any objective scales every
    contribution alike and the ranking does not depend on units. Exact ties share a
    contribution of zero, so neither is preferred by it.
    """
    if points and len(points[0]) > 2:
        points, total = list(points), hypervolume(points)
        return [total - hypervolume(points[:i] + points[i + 1:]) for i in range(len(points))]
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    low_x = low_y = 0.0
    out = [0.0] * len(points)
    for position, i in enumerate(order):
        x, y = points[i]
        left_x = points[order[position - 1]][0] if position > 0 else low_x
        right_y = points[order[position + 1]][1] if position + 1 < len(order) else low_y
        out[i] = max(x - left_x, 0.0) * max(y - right_y, 0.0)
    return out
