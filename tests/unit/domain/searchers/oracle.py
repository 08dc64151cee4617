"""An independent, deliberately plain reimplementation of ASHA early stopping, for checking the real one.

It shares nothing with `runyard.server.domain.searchers` but the decision and
input types: ranks come from a sorted list kept with `bisect` (the searcher
counts), the rung a step reached from `bisect` over the levels (the searcher
scans), and the bookkeeping is one function over the whole input sequence.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

from runyard.server.domain.searchers import (
    Closed,
    Complete,
    CreateTrial,
    Decision,
    MetricReported,
    Promote,
    RunEnded,
    SearcherInput,
    Started,
    StopRun,
    Trial,
)


def ladder(min_resource: int, eta: int, max_resource: int | None) -> list[int]:
    top = max_resource if max_resource is not None else 10**9
    levels = []
    level = min_resource
    while level < top:
        levels.append(level)
        level *= eta
    return levels


def expected_decisions(
    trials: Sequence[Trial],
    goal: str,
    min_resource: int,
    eta: int,
    max_resource: int | None,
    max_parallel: int | None,
    run_id_of: Callable[[int], str],
    inputs: Sequence[SearcherInput],
    early_stopping: bool = True,
) -> list[list[Decision]]:
    """For each input in turn, the decisions ASHA prescribes."""
    levels = ladder(min_resource, eta, max_resource)
    rungs: dict[int, list[float]] = {}
    highest: dict[str, int] = {}
    running: list[str] = []
    next_index = 0
    started = False
    closed: str | None = None
    finished = False
    out: list[list[Decision]] = []

    def fill() -> list[Decision]:
        nonlocal next_index, finished
        made: list[Decision] = []
        if finished:
            return made
        while closed is None and next_index < len(trials) and (max_parallel is None or len(running) < max_parallel):
            run_id = run_id_of(next_index)
            made.append(CreateTrial(next_index, run_id, dict(trials[next_index])))
            running.append(run_id)
            next_index += 1
        if not running and (closed is not None or next_index == len(trials)):
            finished = True
            made.append(Complete(closed if closed is not None else "every trial ended"))
        return made

    for item in inputs:
        made: list[Decision] = []
        if isinstance(item, Started):
            if not started:
                started = True
                made = fill()
        elif isinstance(item, RunEnded):
            if item.run_id in running:
                running.remove(item.run_id)
                made = fill()
        elif isinstance(item, Closed):
            if closed is None and not finished:
                closed = item.reason
                if started:
                    made = fill()
        elif isinstance(item, MetricReported) and early_stopping:
            run_id, step, value = item.run_id, item.step, item.value
            rung = bisect.bisect_right(levels, step) - 1
            if run_id in running and math.isfinite(value) and rung >= 0 and rung > highest.get(run_id, -1):
                highest[run_id] = rung
                keys = rungs.setdefault(rung, [])
                key = -value if goal == "maximize" else value
                position = bisect.bisect_right(keys, key)  # after every result at least as good
                keys.insert(position, key)
                keep = max(1, len(keys) // eta)
                if position < keep:
                    made = [Promote(run_id, rung, levels[rung], value)]
                else:
                    running.remove(run_id)
                    made = [StopRun(run_id, "asha", rung, levels[rung], value), *fill()]
        out.append(made)
    return out
