"""Billing arithmetic: the GPU time of attempts, split by calendar period (UTC) and clipped to a window.

Pure and exact. Durations are integer microseconds (what both databases keep of a
timestamp) times the GPUs an attempt held; seconds appear only when a figure is
shown. So the same events always give the same figures, to the microsecond,
however the attempts are grouped, split or summed.

Periods are UTC calendar days ("2026-11-27") and months ("2026-11"): an
attempt that runs over midnight is billed partly to each day, split exactly at
the boundary. A window [from, to) keeps only the time inside it, so usage of
adjacent windows adds up to the usage of their union.

What an interval is, is the usage projection's rule (runyard.server.projections.usage):
from RunAssigned to the event that ends the attempt, which for an attempt lost
with its agent is the end of its lease.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

MICROS_PER_SECOND = 1_000_000

Period = Literal["day", "month"]


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time in Runyard is UTC."""
    if value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def micros(delta: timedelta) -> int:
    """A duration in whole microseconds, without the rounding of total_seconds()."""
    return (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def gpu_micros(started: datetime, ended: datetime, gpus: int) -> int:
    """GPU-microseconds of holding `gpus` GPUs from `started` to `ended` (0 if it ends first)."""
    return max(0, micros(utc(ended) - utc(started))) * gpus


def seconds(gpu_us: int) -> float:
    """The one place microseconds become the seconds people read."""
    return gpu_us / MICROS_PER_SECOND


def period_start(at: datetime, period: Period) -> datetime:
    """Start of the UTC day or month that contains `at`."""
    at = utc(at)
    if period == "day":
        return datetime(at.year, at.month, at.day, tzinfo=UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def next_period_start(start: datetime, period: Period) -> datetime:
    """Start of the period after the one that begins at `start`."""
    if period == "day":
        return start + timedelta(days=1)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def period_label(start: datetime, period: Period) -> str:
    return start.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


@dataclass(frozen=True)
class Piece:
    """The part of an interval inside one period."""

    period: str
    start: datetime
    end: datetime

    @property
    def micros(self) -> int:
        return micros(self.end - self.start)


def split(
    started: datetime,
    ended: datetime,
    period: Period,
    window_from: datetime | None = None,
    window_to: datetime | None = None,
) -> list[Piece]:
    """[started, ended) clipped to [window_from, window_to), cut at every period boundary.

    An empty interval inside the window (assigned and ended at the same
    microsecond) gives one empty piece, so that the attempt is still counted.
    """
    start, end = utc(started), utc(ended)
    empty = end <= start
    if window_from is not None:
        start = max(start, utc(window_from))
    if window_to is not None:
        end = min(end, utc(window_to))
    if empty:
        inside = (window_from is None or start == utc(started)) and (window_to is None or start < utc(window_to))
        return [Piece(period_label(period_start(start, period), period), start, start)] if inside else []
    if end <= start:
        return []
    pieces: list[Piece] = []
    cursor = start
    while True:
        begins = period_start(cursor, period)
        boundary = next_period_start(begins, period)
        piece_end = min(end, boundary)
        pieces.append(Piece(period_label(begins, period), cursor, piece_end))
        if piece_end >= end:
            return pieces
        cursor = piece_end


@dataclass(frozen=True)
class BilledAttempt:
    """One attempt's billed interval, as the usage projection keeps it."""

    run_id: str
    attempt: int
    account_id: str
    gpus: int
    gpu_model: str
    started_at: datetime
    #: None while the attempt still holds its GPUs.
    ended_at: datetime | None


@dataclass(frozen=True)
class UsageLine:
    """GPU time of one account, period and GPU model."""

    account_id: str
    period: str
    gpu_model: str
    gpu_micros: int
    attempts: int


def summarize(
    attempts: Iterable[BilledAttempt],
    period: Period,
    now: datetime,
    window_from: datetime | None = None,
    window_to: datetime | None = None,
) -> tuple[list[UsageLine], int]:
    """Usage lines (sorted by account, period, model) and their total in GPU-microseconds.

    Open attempts are billed up to `now`, never beyond: a window that reaches
    into the future bills nothing there. Attempts that held no GPU (CPU-only
    runs) cost nothing and are left out.
    """
    totals: dict[tuple[str, str, str], list[int]] = {}
    grand = 0
    for a in attempts:
        if a.gpus <= 0:
            continue
        end = a.ended_at if a.ended_at is not None else max(utc(now), utc(a.started_at))
        for piece in split(a.started_at, end, period, window_from, window_to):
            amount = piece.micros * a.gpus
            entry = totals.setdefault((a.account_id, piece.period, a.gpu_model), [0, 0])
            entry[0] += amount
            entry[1] += 1
            grand += amount
    lines = [UsageLine(acc, per, model, us, n) for (acc, per, model), (us, n) in sorted(totals.items())]
    return lines, grand
