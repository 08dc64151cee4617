"""Billing arithmetic: exact GPU time, split at UTC period boundaries, clipped to a window."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from runyard.server.domain.billing import (
    BilledAttempt,
    Period,
    gpu_micros,
    micros,
    next_period_start,
    split,
    summarize,
)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def attempt(start: str, end: str | None, gpus: int = 1, account: str = "acc", model: str = "H100") -> BilledAttempt:
    return BilledAttempt("run-1", 1, account, gpus, model, t(start), t(end) if end else None)


def test_micros_are_exact_where_float_seconds_would_round() -> None:
    delta = timedelta(days=400, microseconds=1)
    assert micros(delta) == 400 * 86_400 * 1_000_000 + 1
    assert gpu_micros(t("2026-01-01 00:00:00"), t("2026-01-01 00:00:00.000003"), 4) == 12


def test_an_attempt_over_midnight_is_billed_to_each_day_up_to_the_microsecond() -> None:
    pieces = split(t("2026-11-27 23:59:59.250000"), t("2026-11-28 00:00:01.000001"), "day")
    assert [(p.period, p.micros) for p in pieces] == [("2026-11-27", 750_000), ("2026-11-28", 1_000_001)]


def test_months_split_at_the_first_and_cross_the_year() -> None:
    pieces = split(t("2026-12-31 23:00:00"), t("2027-02-01 01:00:00"), "month")
    assert [p.period for p in pieces] == ["2026-12", "2027-01", "2027-02"]
    assert [p.micros for p in pieces] == [3600 * 10**6, 31 * 86_400 * 10**6, 3600 * 10**6]
    assert next_period_start(t("2026-12-01 00:00:00"), "month") == t("2027-01-01 00:00:00")


def test_the_window_keeps_only_the_time_inside_from_inclusive_to_exclusive() -> None:
    start, end = t("2026-03-01 10:00:00"), t("2026-03-03 10:00:00")
    pieces = split(start, end, "day", t("2026-03-02 00:00:00"), t("2026-03-02 12:00:00"))
    assert [(p.period, p.micros) for p in pieces] == [("2026-03-02", 12 * 3600 * 10**6)]
    # Touching the window at an edge is no time inside it.
    assert split(start, end, "day", end, end + timedelta(days=1)) == []
    assert split(start, end, "day", start - timedelta(days=1), start) == []


def test_an_empty_attempt_is_counted_once_inside_the_window_and_never_outside() -> None:
    at = t("2026-03-01 10:00:00")
    assert [(p.period, p.micros) for p in split(at, at, "day")] == [("2026-03-01", 0)]
    assert split(at, at, "day", at, at + timedelta(seconds=1)) != []
    assert split(at, at, "day", at + timedelta(microseconds=1), None) == []
    assert split(at, at, "day", None, at) == []


def test_summary_groups_by_account_period_and_model_and_counts_attempts() -> None:
    now = t("2026-05-02 12:00:00")
    lines, total = summarize(
        [
            attempt("2026-05-01 23:00:00", "2026-05-02 01:00:00", gpus=2),
            attempt("2026-05-01 10:00:00", "2026-05-01 10:00:30", model="A100"),
            attempt("2026-05-02 11:00:00", None, account="other"),  # still running: up to now
            attempt("2026-05-01 00:00:00", "2026-05-02 00:00:00", gpus=0),  # CPU only: not billed
        ],
        "day",
        now,
    )
    got = [(x.account_id, x.period, x.gpu_model, x.gpu_micros, x.attempts) for x in lines]
    assert got == [
        ("acc", "2026-05-01", "A100", 30 * 10**6, 1),
        ("acc", "2026-05-01", "H100", 2 * 3600 * 10**6, 1),
        ("acc", "2026-05-02", "H100", 2 * 3600 * 10**6, 1),
        ("other", "2026-05-02", "H100", 3600 * 10**6, 1),
    ]
    assert total == sum(x.gpu_micros for x in lines)


def test_an_open_attempt_is_never_billed_into_the_future() -> None:
    now = t("2026-05-02 12:00:00")
    _, total = summarize([attempt("2026-05-02 11:00:00", None)], "day", now, None, now + timedelta(days=30))
    assert total == 3600 * 10**6


instants = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


PERIODS: tuple[Period, ...] = ("day", "month")


@given(instants, instants, instants, st.sampled_from(PERIODS))
def test_pieces_tile_the_interval_and_adjacent_windows_add_up(
    a: datetime, b: datetime, cut: datetime, period: Period
) -> None:
    start, end = min(a, b), max(a, b)
    whole = split(start, end, period)
    assert sum(p.micros for p in whole) == micros(end - start)
    assert all(x.end == y.start and x.period < y.period for x, y in itertools.pairwise(whole))
    left = split(start, end, period, None, cut)
    right = split(start, end, period, cut, None)
    assert sum(p.micros for p in left) + sum(p.micros for p in right) == micros(end - start)
