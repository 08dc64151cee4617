"""Turning a run's output into metric points (pure: no I/O, no clock).

Two sources, so that user code needs no Runyard package and no network:

* stdout lines matching a manifest regex: every named group except ``step``
  is a metric; ``step`` (when present) is the step, otherwise each metric
  counts its own points from 0.
* JSON lines appended by ``runyard.log`` to RUNYARD_METRICS_FILE:
  ``{"step": 3, "time": 1700000000.1, "val_accuracy": 0.95}``; every other
  numeric field is a metric.

A value that is not a finite number (a regex group that matched "abc", a JSON
string, NaN from a diverged loss) is skipped rather than failing the run:
metrics are a side channel and must never take training down, and NaN/inf have
no JSON form for the read side.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable

from runyard.storable import storable
from runyard.v1.common_pb2 import MetricPoint

SOURCE_STDOUT = "stdout"
SOURCE_JSONL = "jsonl"


class StepCounter:
    """Auto-increment steps per metric for points that carry no step of their own."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def next(self, name: str) -> int:
        step = self._next.get(name, 0)
        self._next[name] = step + 1
        return step


def compile_patterns(regexes: Iterable[str]) -> tuple[list[re.Pattern[str]], list[str]]:
    """Compile what compiles; return (patterns, one error message per bad regex)."""
    patterns: list[re.Pattern[str]] = []
    errors: list[str] = []
    for regex in regexes:
        try:
            pattern = re.compile(regex)
        except re.error as e:
            errors.append(f"metric pattern {regex!r} ignored: {e}")
            continue
        if not set(pattern.groupindex) - {"step"}:
            errors.append(f"metric pattern {regex!r} ignored: it has no named group other than 'step'")
            continue
        patterns.append(pattern)
    return patterns, errors


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _step(text: str | None) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


class StdoutMetricParser:
    """Applies the run's metric patterns to stdout lines; remembers auto steps across lines."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        # Each pattern's search, its metric groups (name, index into m.groups()) in the order they appear,
        # and its step group's index (None: no step): worked out once, as `parse` runs on every line a run
        # prints, and one m.groups() costs less than a m.group() per name.
        self._patterns = [
            (
                p.search,
                tuple((name, i - 1) for name, i in p.groupindex.items() if name != "step"),
                p.groupindex["step"] - 1 if "step" in p.groupindex else None,
            )
            for p in patterns
        ]
        self._steps = StepCounter()

    def parse(self, line: str, time_us: int) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for search, names, step_at in self._patterns:
            m = search(line)
            if m is None:
                continue
            groups = m.groups()
            step = None
            if step_at is not None:
                raw = groups[step_at]
                # Plain digits that fit a double exactly are what nearly every step is: int() as float() would.
                step = int(raw) if raw is not None and len(raw) < 16 and raw.isascii() and raw.isdigit() else _step(raw)
            for name, at in names:
                value = _number(groups[at])
                if value is None:
                    continue
                point = MetricPoint()
                point.name = name
                point.step = step if step is not None else self._steps.next(name)
                point.value = value
                point.time_us = time_us
                point.source = SOURCE_STDOUT
                points.append(point)
        return points


class JsonlMetricParser:
    """Parses lines written by runyard.log; a line without a step gets an auto step per metric."""

    def __init__(self) -> None:
        self._steps = StepCounter()

    def parse(self, line: str, now_us: int) -> list[MetricPoint]:
        line = line.strip()
        if not line:
            return []
        try:
            record = json.loads(line)
        except ValueError:
            return []
        if not isinstance(record, dict):
            return []
        step = _json_int(record.get("step"))
        when = record.get("time")
        time_us = (
            _int64(when * 1_000_000)
            if isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when)
            else now_us
        )
        points: list[MetricPoint] = []
        for key, raw in record.items():
            if key in ("step", "time") or isinstance(raw, bool) or not isinstance(raw, int | float):
                continue
            try:
                value = float(raw)
            except OverflowError:  # an int beyond any double
                continue
            if not math.isfinite(value):
                continue
            name = storable(str(key))  # JSON may spell NUL or a lone surrogate ("\u0000", "\ud800")
            points.append(
                MetricPoint(
                    name=name,
                    step=step if step is not None else self._steps.next(name),
                    value=value,
                    time_us=time_us,
                    source=SOURCE_JSONL,
                )
            )
        return points


def _json_int(raw: object) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    return _int64(raw)


def _int64(raw: float) -> int:
    """A step or time as the int64 a MetricPoint holds: beyond it, the nearest end."""
    return min(max(int(raw), -(2**63)), 2**63 - 1)


class JsonlSplitter:
    """Cuts appended bytes into complete lines, holding back a partial last line."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [raw.decode("utf-8", errors="replace") for raw in lines]

    def rest(self) -> list[str]:
        """The unterminated tail once the writer is gone (the process exited)."""
        rest, self._partial = self._partial, b""
        return [rest.decode("utf-8", errors="replace")] if rest.strip() else []
