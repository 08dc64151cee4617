"""Which metric points of a resumed attempt repeat what an earlier attempt recorded.

An attempt that resumes from a checkpoint at step k trains k+1, k+2, ...
again up to where its predecessor got before it was lost, and reports
those steps a second time. The first value stands: a point of attempt a
at (run, name, step) is a repeat when an earlier attempt of the run
reported `name` at that step or a later one. Attempts' points reach the log
in attempt order (a lost attempt's reports are refused once the next is
assigned), so the rule needs only, per run and name, the highest step of
the earlier attempts: the metrics projection, metric history, WatchRun and
the searchers' inputs all apply this same rule and agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

P = TypeVar("P")


@dataclass
class RunSteps:
    """One run's highest step per metric name: of the attempts before `attempt`, and of `attempt` itself."""

    attempt: int = 0
    earlier: dict[str, int] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)

    def move_to(self, attempt: int) -> None:
        """Points of `attempt` arrive: what the attempts before it reached becomes the bar."""
        if attempt <= self.attempt:
            return
        if self.current:
            earlier = self.earlier
            for name, step in self.current.items():
                if step > earlier.get(name, step - 1):
                    earlier[name] = step
            self.current = {}
        self.attempt = attempt

    def keep(self, attempt: int, name: str, step: int) -> bool:
        """Is this point new (no earlier attempt reached its step)? Records it when it is."""
        if attempt != self.attempt:
            if attempt < self.attempt:
                return True  # not expected (the log holds attempts in order): recorded, as before
            self.move_to(attempt)
        bar = self.earlier.get(name)
        if bar is not None and step <= bar:
            return False
        current = self.current
        if step > current.get(name, step - 1):
            current[name] = step
        return True


class RepeatFilter:
    """RunSteps for many runs, for readers that follow the log in order (WatchRun, the searchers)."""

    def __init__(self) -> None:
        self.runs: dict[str, RunSteps] = {}

    def seed(self, run_id: str, reached: Mapping[int, Mapping[str, int]]) -> None:
        """Start from what a run's attempts reached before the reader's first event ({attempt: {name: step}})."""
        steps = self.runs.setdefault(run_id, RunSteps())
        for attempt in sorted(reached):
            steps.move_to(attempt)
            for name, step in reached[attempt].items():
                steps.keep(attempt, name, step)

    def kept(self, run_id: str, attempt: int, points: Iterable[P], name_step: Iterable[tuple[str, int]]) -> list[P]:
        """The points (with their (name, step), in the same order) that no earlier attempt of the run reached."""
        steps = self.runs.get(run_id)
        if steps is None:
            steps = self.runs[run_id] = RunSteps()
        return [p for p, (n, s) in zip(points, name_step, strict=True) if steps.keep(attempt, n, s)]

    def forget(self, run_id: str) -> None:
        self.runs.pop(run_id, None)
