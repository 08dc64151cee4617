"""Downsampling long metric histories on read: bounded, shape-keeping, deterministic."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from runyard.server.queries.downsample import keep

histories = st.lists(
    st.tuples(st.integers(0, 10_000), st.floats(allow_nan=False, allow_infinity=False, width=64)),
    min_size=1,
    max_size=300,
)


def pick(history: list[tuple[int, float]], max_points: int) -> list[int]:
    return keep([s for s, _ in history], [v for _, v in history], max_points)


def test_a_long_even_history_becomes_evenly_spaced_steps_with_its_ends_and_extremes() -> None:
    steps = list(range(200_000))
    values = [math.sin(s / 5000) for s in steps]
    values[123_457] = 99.0  # a spike between two sampled steps
    values[7] = -99.0
    kept = keep(steps, values, 1000)
    assert len(kept) == 1000
    assert {0, 199_999, 123_457, 7} <= set(kept)
    gaps = {b - a for a, b in itertools.pairwise(kept) if a not in (7, 123_457) and b not in (7, 123_457)}
    assert max(gaps) - min(gaps) <= 1  # evenly spaced, give or take rounding


def test_short_histories_and_zero_come_back_whole() -> None:
    assert keep([3, 1, 2], [0.1, 0.2, 0.3], 3) == [0, 1, 2]
    assert keep([3, 1, 2], [0.1, 0.2, 0.3], 0) == [0, 1, 2]


def test_below_four_points_the_last_then_first_then_extremes_win() -> None:
    steps, values = [0, 1, 2, 3, 4], [5.0, 9.0, 1.0, 4.0, 3.0]
    assert keep(steps, values, 1) == [4]
    assert keep(steps, values, 2) == [0, 4]
    assert keep(steps, values, 3) == [0, 2, 4]
    assert keep(steps, values, 4) == [0, 1, 2, 4]


def test_first_and_last_are_by_step_not_by_logged_order() -> None:
    # Logged out of step order (a resumed attempt re-logging early steps).
    steps, values = [50, 60, 0, 10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    kept = keep(steps, values, 4)
    assert 2 in kept and 1 in kept  # step 0 and step 60


@given(histories, st.integers(1, 50))
def test_never_more_than_asked_always_ends_and_extremes(history: list[tuple[int, float]], max_points: int) -> None:
    kept = pick(history, max_points)
    assert kept == sorted(set(kept)) and all(0 <= i < len(history) for i in kept)
    assert len(kept) <= max(max_points, 0) or len(history) <= max_points
    if len(history) <= max_points:
        assert kept == list(range(len(history)))
        return
    steps = [s for s, _ in history]
    values = [v for _, v in history]
    kept_steps = {steps[i] for i in kept}
    kept_values = {values[i] for i in kept}
    must = [max(steps), min(steps), min(values), max(values)][:max_points]
    assert must[0] in kept_steps
    if max_points >= 2:
        assert must[1] in kept_steps
    if max_points >= 4:
        assert must[2] in kept_values and must[3] in kept_values
    assert pick(history, max_points) == kept  # same history, same answer
