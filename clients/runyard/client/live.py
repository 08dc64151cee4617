"""A live table of runs for `runyard watch --table` and `runyard list --watch`.

`watch` prints a line per update, which is what a log reader wants; a person waiting for an
experiment wants to see where each run stands: its state, how far it got (the highest step
of any metric point so far: the epoch or step the script reports) and its latest value of
each metric. `RunsBoard` folds the same `RunUpdate` stream into that picture; rich's `Live`
redraws it in place on a terminal (and prints it once at the end when piped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

from runyard.client import render
from runyard.v1 import common_pb2, resources_pb2, watch_pb2


@dataclass
class BoardRow:
    """What the board knows of one run."""

    run_id: str
    index: int = -1
    state: int = common_pb2.RUN_STATE_QUEUED
    attempt: int = 0
    agent_id: str = ""
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: str = ""
    note: str = ""


class RunsBoard:
    """Runs of a watch, folded from its updates; `table()` draws them.

    `metric` (the experiment's search metric) comes first among the metric columns.
    `describe` looks a run up when an update names a run the board has not seen (a
    searched experiment adds runs as it goes), for its index and hyperparameters.
    """

    def __init__(
        self,
        runs: Iterable[resources_pb2.Run] = (),
        metric: str = "",
        describe: Callable[[str], resources_pb2.Run | None] | None = None,
    ) -> None:
        self.metric = metric
        self.rows: dict[str, BoardRow] = {}
        self._describe = describe
        for run in runs:
            self._add(run)

    def _add(self, run: resources_pb2.Run) -> BoardRow:
        row = BoardRow(
            run_id=run.id,
            index=run.index,
            state=run.state or common_pb2.RUN_STATE_QUEUED,
            attempt=run.attempt,
            agent_id=run.agent_id,
            metrics=dict(run.latest_metrics),
            hyperparameters=render.fmt_hyperparameters(run),
        )
        self.rows[run.id] = row
        return row

    def row(self, run_id: str) -> BoardRow:
        if run_id not in self.rows:
            run = self._describe(run_id) if self._describe is not None else None
            if run is not None and run.id == run_id:
                return self._add(run)
            self.rows[run_id] = BoardRow(run_id=run_id)
        return self.rows[run_id]

    def apply(self, update: watch_pb2.RunUpdate) -> None:
        body = update.WhichOneof("body")
        if not update.run_id or body not in ("status", "metrics", "queue"):
            return
        row = self.row(update.run_id)
        if body == "status":
            status = update.status
            if status.cancel_requested:
                row.note = "cancel requested"
                return
            row.state = status.state
            row.attempt = status.attempt or row.attempt
            row.agent_id = status.agent_id or row.agent_id
            row.note = "" if status.state != common_pb2.RUN_STATE_QUEUED else row.note
        elif body == "queue":
            row.note = f"#{update.queue.position}: {update.queue.reason}"
        else:
            for point in update.metrics.points:
                row.metrics[point.name] = point.value
                row.step = point.step if row.step is None else max(row.step, point.step)

    def metric_names(self) -> list[str]:
        names = sorted({n for row in self.rows.values() for n in row.metrics})
        first = [self.metric] if self.metric in names else []
        return (first + [n for n in names if n != self.metric])[: render.MAX_METRIC_COLUMNS]

    def table(self) -> Table:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("RUN", no_wrap=True)
        table.add_column("STATE", no_wrap=True)
        table.add_column("STEP", justify="right")
        names = self.metric_names()
        for name in names:
            table.add_column(name, justify="right", no_wrap=True)
        # Hyperparameters give way (cut short with "...") before the figures do on a narrow terminal.
        table.add_column("HYPERPARAMETERS", no_wrap=True, overflow="ellipsis")
        notes = any(row.note for row in self.rows.values())
        if notes:
            table.add_column("", style="dim", no_wrap=True, overflow="ellipsis")
        for row in sorted(self.rows.values(), key=lambda r: (r.index < 0, r.index, r.run_id)):
            cells: list[str | Text] = [
                row.run_id,
                render.styled_state(render.run_state_name(row.state)),
                "" if row.step is None else str(row.step),
                *[render.fmt_value(row.metrics[n]) if n in row.metrics else "" for n in names],
                row.hyperparameters,
            ]
            if notes:
                cells.append(Text(row.note))
            table.add_row(*cells)
        return table
