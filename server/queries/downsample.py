"""Downsampling a long metric history on read (pure: no I/O).

A run may report hundreds of thousands of points per metric; a terminal plot
or a table wants a few hundred. `GetRunMetrics(max_points=N)` returns at most
N points of each metric, chosen so the curve keeps what people look for:

1. the **first** and the **last** point by step (ties: the one logged
   first/last), so the curve spans its whole range and ends on the latest value;
2. the points with the **smallest** and the **largest** value (the first
   logged of equals), so a spike or the best score is never sampled away;
3. the rest at **evenly spaced steps**: for each of the N - (1..4) remaining
   targets ``first + k * (last - first) / (remaining + 1)`` the first point at
   or after that step. Spacing by step rather than by position keeps the x
   axis evenly covered when a script logs densely early and sparsely later.

Targets that land on a point already kept add nothing, so fewer than N points
may come back when steps cluster (many points on a few steps). For N < 4 the
kept points are, in this order of priority, the last, the first, the minimum
and the maximum. Whatever is kept is returned in the order the points were
logged, as without downsampling. The choice depends only on the points, so
two reads of the same history give the same answer.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


def keep(steps: Sequence[int], values: Sequence[float], max_points: int) -> list[int]:
    """Indices (into one metric's points, in logged order) of the points to return, ascending."""
    n = len(steps)
    if max_points <= 0 or n <= max_points:
        return list(range(n))
    by_step = sorted(range(n), key=steps.__getitem__)  # stable: equal steps stay in logged order
    smallest = min(range(n), key=values.__getitem__)
    largest = max(range(n), key=values.__getitem__)
    chosen = list(dict.fromkeys((by_step[-1], by_step[0], smallest, largest)))[:max_points]
    kept = set(chosen)
    remaining = max_points - len(kept)
    if remaining > 0:
        ordered_steps = [steps[i] for i in by_step]
        first, last = ordered_steps[0], ordered_steps[-1]
        span = last - first
        for k in range(1, remaining + 1):
            target = first + span * k / (remaining + 1)
            at = bisect_left(ordered_steps, target)
            if at < n:
                kept.add(by_step[at])
    return sorted(kept)
