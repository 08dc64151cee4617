"""Reading an experiment's outcome: its leaderboard, runs side by side, and the best run's results.

The ranking comes from the server: each Run carries ``best_metric`` (its best
value of the experiment's search metric, by the manifest's goal) and
``best_step`` (where it first got there), so the CLI, the SDK and any other
client agree on who leads. Ties go to the run that got there at an earlier
step, then to the lower run index, so the order never flickers between calls.
Runs without a point of the search metric yet are listed after the ranked ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from rich.table import Table
from rich.text import Text

from runyard.client import render
from runyard.client.errors import ClientError
from runyard.server.domain.units import format_bytes
from runyard.v1 import common_pb2, resources_pb2, run_service_pb2

if TYPE_CHECKING:  # commands imports this module
    from runyard.client.commands import Context



@dataclass(frozen=True)
class Objective:
    """The experiment's search metric and direction; `metric` is "" when the manifest names none."""

    metric: str
    goal: str

    @property
    def maximize(self) -> bool:
        return not self.goal.startswith("min")


def objective(experiment: resources_pb2.Experiment) -> Objective:
    metric, goal = render.search_metric(experiment)
    return Objective(metric, goal or "maximize")


def is_scored(run: resources_pb2.Run) -> bool:
    return bool(run.HasField("best_metric"))


def ranked(runs: Sequence[resources_pb2.Run], goal: Objective) -> list[resources_pb2.Run]:
    """Scored runs best first (ties: earlier step, then lower index), then the rest by index."""
    sign = -1.0 if goal.maximize else 1.0
    scored = sorted((r for r in runs if is_scored(r)), key=lambda r: (sign * r.best_metric, r.best_step, r.index))
    rest = sorted((r for r in runs if not is_scored(r)), key=lambda r: r.index)
    return scored + rest


def hyperparameters(run: resources_pb2.Run) -> dict[str, Any]:
    return dict(json_format.MessageToDict(run).get("hyperparameters", {}))


def fmt_gpu_time(seconds: float) -> str:
    """GPU time for a table: '-' for none (CPU-only runs), else 42s, 3m12s, 2h05m."""
    if seconds <= 0:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# -- show EXPERIMENT: the leaderboard -------------------------------------------------------


def leaderboard_rows(experiment: resources_pb2.Experiment) -> list[dict[str, Any]]:
    """The leaderboard for scripts: one entry per run, best first, `rank` null for unscored runs."""
    goal = objective(experiment)
    rows = []
    for n, run in enumerate(ranked(list(experiment.runs), goal), start=1):
        scored = is_scored(run)
        rows.append(
            {
                "rank": n if scored else None,
                "run_id": run.id,
                "index": run.index,
                "state": common_pb2.RunState.Name(run.state),
                "best": run.best_metric if scored else None,
                "step": run.best_step if scored else None,
                "latest": run.latest_metrics.get(goal.metric),
                "hyperparameters": hyperparameters(run),
                "gpu_seconds": run.gpu_seconds,
            }
        )
    return rows


def leaderboard_json(experiment: resources_pb2.Experiment) -> dict[str, Any]:
    goal = objective(experiment)
    return {"metric": goal.metric, "goal": goal.goal, "runs": leaderboard_rows(experiment)}


def leaderboard_table(experiment: resources_pb2.Experiment) -> Table:
    goal = objective(experiment)
    arrow = "max" if goal.maximize else "min"
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("RUN", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column(f"BEST {goal.metric} ({arrow})", justify="right", no_wrap=True)
    table.add_column("AT STEP", justify="right")
    table.add_column("LATEST", justify="right")
    table.add_column("HYPERPARAMETERS")
    table.add_column("GPU TIME", justify="right", no_wrap=True)
    for n, run in enumerate(ranked(list(experiment.runs), goal), start=1):
        scored = is_scored(run)
        latest = run.latest_metrics.get(goal.metric)
        table.add_row(
            str(n) if scored else "",
            Text(run.id, style="bold green") if scored and n == 1 else run.id,
            _state_cell(run),
            render.fmt_value(run.best_metric) if scored else "",
            str(run.best_step) if scored else "",
            render.fmt_value(latest) if latest is not None else "",
            render.fmt_hyperparameters(run),
            fmt_gpu_time(run.gpu_seconds),
        )
    return table


def _state_cell(run: resources_pb2.Run) -> Text:
    text: Text = render.styled_state(render.run_state_name(run.state))
    if run.state == common_pb2.RUN_STATE_QUEUED and run.queue_position:
        text.append(f" #{run.queue_position}")
    return text


def best_line(experiment: resources_pb2.Experiment) -> str:
    """'best: run-... val_accuracy=0.97 at step 9 (lr=0.01 ...)', or '' before any run has a point."""
    goal = objective(experiment)
    runs = ranked(list(experiment.runs), goal)
    if not goal.metric or not runs or not is_scored(runs[0]):
        return ""
    top = runs[0]
    label = "best so far" if experiment.state == resources_pb2.EXPERIMENT_STATE_ACTIVE else "best"
    return (
        f"{label}: {top.id} {goal.metric}={render.fmt_value(top.best_metric)} at step {top.best_step}"
        f" ({render.fmt_hyperparameters(top)})"
    )


# -- compare RUN... ---------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace, ctx: Context) -> int:
    run_ids: list[str] = list(dict.fromkeys(args.runs))
    for run_id in run_ids:
        if not run_id.startswith("run-"):
            raise ClientError(f"{run_id!r} is not a run id (run-...); `runyard show EXPERIMENT` lists its runs")
    client = ctx.client()
    runs = [client.get_run(run_id) for run_id in run_ids]
    goals: dict[str, Objective] = {}
    for run in runs:
        if run.experiment_id not in goals:
            goals[run.experiment_id] = objective(client.get_experiment(run.experiment_id))
    if ctx.json:
        render.print_json({"runs": [compare_entry(run, goals[run.experiment_id]) for run in runs]})
        return 0
    ctx.out.print(compare_table(runs, goals))
    return 0


def compare_entry(run: resources_pb2.Run, goal: Objective) -> dict[str, Any]:
    scored = is_scored(run)
    return {
        "run_id": run.id,
        "experiment_id": run.experiment_id,
        "state": common_pb2.RunState.Name(run.state),
        "hyperparameters": hyperparameters(run),
        "metric": goal.metric,
        "goal": goal.goal,
        "best": {"value": run.best_metric, "step": run.best_step} if scored else None,
        "final": dict(sorted(run.latest_metrics.items())),
        "gpu_seconds": run.gpu_seconds,
    }


def compare_table(runs: Sequence[resources_pb2.Run], goals: dict[str, Objective]) -> Table:
    """One column per run; a row per attribute, hyperparameters that differ in bold."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("", style="bold", no_wrap=True)
    for run in runs:
        table.add_column(run.id, justify="right", no_wrap=True)

    def row(label: str, cells: Sequence[str | Text], highlight: bool = False) -> None:
        table.add_row(Text(label, style="bold yellow" if highlight else "bold"), *cells)

    if len({r.experiment_id for r in runs}) > 1:
        row("experiment", [r.experiment_id for r in runs])
    row("state", [render.styled_state(render.run_state_name(r.state)) for r in runs])
    params = [hyperparameters(r) for r in runs]
    for name in sorted({n for p in params for n in p}):
        values = [render.fmt_value(p[name]) if name in p else "" for p in params]
        differs = len(set(values)) > 1
        row(name, [Text(v, style="bold yellow") if differs else v for v in values], highlight=differs)
    metrics = sorted({g.metric for g in goals.values() if g.metric})
    for metric in metrics:
        cells: list[str | Text] = []
        for r in runs:
            counts = goals[r.experiment_id].metric == metric and is_scored(r)
            cells.append(f"{render.fmt_value(r.best_metric)} @{r.best_step}" if counts else "")
        row(f"best {metric}", cells)
    for name in sorted({n for r in runs for n in r.latest_metrics}):
        row(
            f"final {name}",
            [render.fmt_value(r.latest_metrics[name]) if name in r.latest_metrics else "" for r in runs],
        )
    row("gpu time", [fmt_gpu_time(r.gpu_seconds) for r in runs])
    row("duration", [render.fmt_duration(r.started_at, r.ended_at) if r.started_at.seconds else "" for r in runs])
    return table


# -- best EXPERIMENT [DEST] -------------------------------------------------------------------


def cmd_best(args: argparse.Namespace, ctx: Context) -> int:
    """Download the results of the best run that has results stored.

    A better-scoring run may have none yet (still running, or failed before
    uploading): it is named on stderr and the next one down the leaderboard is
    taken, so the command gives the best model that can actually be had.
    """
    from runyard.client.commands import download_results, results_objects

    if not args.experiment.startswith("exp-"):
        raise ClientError(f"{args.experiment!r} is not an experiment id (exp-...)")
    experiment = ctx.client().get_experiment(args.experiment)
    goal = objective(experiment)
    if not goal.metric:
        raise ClientError(
            f"experiment {experiment.id} names no search metric (manifest search.metric), so no run is best"
        )
    candidates = [r for r in ranked(list(experiment.runs), goal) if is_scored(r)]
    if not candidates:
        raise ClientError(f"no run of {experiment.id} has reported {goal.metric} yet")
    skipped: list[str] = []
    for run in candidates:
        objects = results_objects(ctx, run) if run.results_uri else []
        if not objects:
            skipped.append(run.id)
            ctx.notice(
                f"{run.id} ({goal.metric}={render.fmt_value(run.best_metric)}) has no results stored "
                f"({render.run_state_name(run.state)}); trying the next best"
            )
            continue
        dest = Path(args.dest) if args.dest else Path(run.id)
        count, total = download_results(ctx, run, dest, objects)
        if ctx.json:
            render.print_json(
                {
                    "experiment_id": experiment.id,
                    "run_id": run.id,
                    "metric": goal.metric,
                    "goal": goal.goal,
                    "value": run.best_metric,
                    "step": run.best_step,
                    "hyperparameters": hyperparameters(run),
                    "results_uri": run.results_uri,
                    "dest": str(dest),
                    "files": count,
                    "bytes": total,
                    "skipped": skipped,
                }
            )
        else:
            ctx.line(
                f"best run {run.id}: {goal.metric}={render.fmt_value(run.best_metric)} at step {run.best_step}"
                f" ({render.fmt_hyperparameters(run)})"
            )
            ctx.line(f"downloaded {count} file{'s' if count != 1 else ''} ({format_bytes(total)}) to {dest}")
        return 0
    raise ClientError(
        f"none of the {len(candidates)} scored runs of {experiment.id} has results stored yet; "
        "results are stored when a run completes"
    )


# -- a run's checkpoints and attempts (runyard show RUN) -----------------------------


def _checkpoint_json(ck: common_pb2.Checkpoint) -> dict[str, Any]:
    return {
        "checkpoint_id": ck.checkpoint_id,
        "run_id": ck.run_id,
        "attempt": ck.attempt,
        "step": ck.step,
        "size_bytes": ck.size_bytes,
        "files": ck.files,
        "time": render.fmt_time_iso_us(ck.time_us),
    }


def run_json(reply: run_service_pb2.GetRunResponse) -> dict[str, Any]:
    """`runyard show RUN -o json`: the run, its checkpoints, and what each attempt resumed from."""
    return {
        **render.to_dict(reply.run),
        "checkpoints": [_checkpoint_json(c) for c in reply.checkpoints],
        "attempts": [
            {
                "attempt": a.attempt,
                "agent_id": a.agent_id,
                "ended": a.ended,
                "resumed_from": _checkpoint_json(a.resumed_from) if a.HasField("resumed_from") else None,
            }
            for a in reply.attempts
        ],
    }


def _resumed_text(ck: common_pb2.Checkpoint, run_id: str) -> str:
    of = "" if ck.run_id == run_id else f" of run {ck.run_id}"
    return f"checkpoint {ck.checkpoint_id}{of} (step {ck.step})"


def checkpoints_table(reply: run_service_pb2.GetRunResponse) -> Table | None:
    """The run's checkpoints, oldest first; None when it has none."""
    if not reply.checkpoints:
        return None
    table = Table(title="checkpoints", title_justify="left", box=None, pad_edge=False)
    for column in ("ID", "ATTEMPT", "STEP", "SIZE", "FILES", "WHEN"):
        table.add_column(column, justify="right" if column in ("ATTEMPT", "STEP", "SIZE", "FILES") else "left")
    latest = reply.checkpoints[-1].checkpoint_id
    for ck in reply.checkpoints:
        label = f"{ck.checkpoint_id} (latest)" if ck.checkpoint_id == latest else ck.checkpoint_id
        table.add_row(
            label,
            str(ck.attempt),
            str(ck.step),
            format_bytes(ck.size_bytes),
            str(ck.files),
            render.fmt_time_iso_us(ck.time_us),
        )
    return table


def attempts_table(reply: run_service_pb2.GetRunResponse) -> Table | None:
    """Each attempt with the checkpoint it resumed from ("afresh" for none); None before the first assignment."""
    if not reply.attempts:
        return None
    table = Table(title="attempts", title_justify="left", box=None, pad_edge=False)
    for column in ("ATTEMPT", "AGENT", "ASSIGNED", "RESUMED FROM", "ENDED"):
        table.add_column(column)
    run_id = reply.run.id
    for a in reply.attempts:
        resumed = _resumed_text(a.resumed_from, run_id) if a.HasField("resumed_from") else "afresh"
        table.add_row(str(a.attempt), a.agent_id, render.fmt_time(a.assigned_at), resumed, a.ended or "running")
    return table
