"""`runyard export tensorboard EXPERIMENT DIR`: every run's metrics as TensorBoard event files.

``tensorboard --logdir DIR`` then shows the whole experiment side by side: one
TensorBoard run per Runyard run, in a folder named by the run id and a short
summary of its hyperparameters (``run-3f9c_hidden=128,lr=0.003``), so the
legend says which curve is which configuration. Each folder also carries the
run's hyperparameters as an HParams session, so the HPARAMS tab tabulates
configurations against their metrics.

**Format.** Each point becomes a ``simple_value`` scalar, a float32: that is
TensorBoard's scalar type in practice. A float64 tensor scalar would keep every
digit, but TensorBoard 2.21's default (Rust) loader silently drops those (seen
here: the tag never appears unless TensorBoard runs with ``--load_fast=false``).
A float32 keeps about 7 significant digits, so a value printed with ``%.4f``
(the stdout source), or one a framework computed in float32 (Keras' callback),
reads back exactly with the widening that ``runyard.agent.tensorboard`` applies;
a double such as 1/3 from ``runyard.log`` reads back as 0.33333334. Points of
one step and wall time share one event, and event wall times are chosen so
that reading them back gives the stored microsecond exactly. Records are
framed with the ``tensorboard`` package's ``RecordWriter``; its
``EventFileWriter`` is not used because it goes through ``tf.io.gfile`` and so
imports TensorFlow whenever that is installed (seconds, for nothing).

**Re-exporting** into the same DIR replaces each run's file (one file per run
folder with a fixed name, written to a temporary name and renamed), so the
curves never appear twice.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runyard import extras
from runyard.client import render
from runyard.client.errors import ClientError
from runyard.v1 import common_pb2, resources_pb2

if TYPE_CHECKING:
    from runyard.client.commands import Context

#: Fixed name of the one event file per run folder (TensorBoard reads any *.tfevents.* name).
EVENT_FILE = "events.out.tfevents.0000000000.runyard"
#: Longest folder name: run id plus as much of the hyperparameter summary as fits.
MAX_FOLDER_CHARS = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def folder_name(run: resources_pb2.Run) -> str:
    """'run-3f9c_hidden=128,lr=0.003': file-system safe, at most MAX_FOLDER_CHARS characters."""
    params = render.fmt_hyperparameters(run).replace(" ", ",")
    summary = _UNSAFE.sub("_", params).strip("_")
    name = f"{run.id}_{summary}" if summary else run.id
    return name[:MAX_FOLDER_CHARS].rstrip("_,")


def wall_time(time_us: int) -> float:
    """Seconds as a double that a reader's int(seconds * 1e6) turns back into `time_us` exactly."""
    seconds = time_us / 1e6
    while int(seconds * 1_000_000) < time_us:
        seconds = math.nextafter(seconds, math.inf)
    while int(seconds * 1_000_000) > time_us:
        seconds = math.nextafter(seconds, -math.inf)
    return seconds


def scalar_events(points: Iterable[common_pb2.MetricPoint]) -> list[Any]:
    """Events for the points, in their order; consecutive points of one step and time share an event."""
    from tensorboard.compat.proto import event_pb2

    events: list[Any] = []
    key: tuple[int, int] | None = None
    for p in points:
        if key != (p.step, p.time_us):
            key = (p.step, p.time_us)
            events.append(event_pb2.Event(wall_time=wall_time(p.time_us), step=p.step))
        events[-1].summary.value.add(tag=p.name, simple_value=p.value)
    return events


def hparams_event(run: resources_pb2.Run, hyperparameters: Mapping[str, Any]) -> Any:
    """The HParams session of the run: its trial id and hyperparameter values."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2

    started = run.started_at.seconds or run.created_at.seconds or None
    summary = summary_v2.hparams_pb(dict(hyperparameters), trial_id=run.id, start_time_secs=started)
    return event_pb2.Event(wall_time=float(started or 0), step=0, summary=summary)


def write_run(folder: Path, events: Sequence[Any], first_wall_time: float = 0.0) -> Path:
    """Write one event file (file-version header, then `events`) into `folder`, replacing an earlier export."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / EVENT_FILE
    partial = folder / f".{EVENT_FILE}.partial"
    with partial.open("wb") as f:
        writer = RecordWriter(f)
        writer.write(event_pb2.Event(wall_time=first_wall_time, file_version="brain.Event:2").SerializeToString())
        for event in events:
            writer.write(event.SerializeToString())
        f.flush()
        os.fsync(f.fileno())
    partial.replace(target)
    return target


def export_run(
    root: Path, run: resources_pb2.Run, points: Sequence[common_pb2.MetricPoint], hyperparameters: Mapping[str, Any]
) -> Path:
    """Write the run's folder under `root`; returns that folder."""
    folder = root / folder_name(run)
    events = scalar_events(points)
    first = min((p.time_us for p in points), default=0)
    header = [hparams_event(run, hyperparameters)] if hyperparameters else []
    write_run(folder, [*header, *events], first_wall_time=wall_time(first) if first else 0.0)
    return folder


def cmd_export_tensorboard(args: argparse.Namespace, ctx: Context) -> int:
    extras.require("`runyard export tensorboard`", "tensorboard")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from runyard.client.views import hyperparameters

    if not args.experiment.startswith("exp-"):
        raise ClientError(f"{args.experiment!r} is not an experiment id (exp-...)")
    root = Path(args.dir)
    if root.exists() and not root.is_dir():
        raise ClientError(f"{root} exists and is not a folder")
    client = ctx.client()
    experiment = client.get_experiment(args.experiment)
    runs = sorted(experiment.runs, key=lambda r: r.index)
    exported: list[dict[str, Any]] = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=ctx.err, transient=True
    ) as bar:
        task = bar.add_task(f"exporting {experiment.id}", total=len(runs))
        for run in runs:
            points = client.get_run_metrics(run.id)
            try:
                folder = export_run(root, run, points, hyperparameters(run))
            except OSError as e:
                raise ClientError(f"cannot write to {root}: {e.strerror or e}") from None
            exported.append({"run_id": run.id, "folder": str(folder), "points": len(points)})
            bar.advance(task)
    if ctx.json:
        render.print_json({"experiment_id": experiment.id, "dir": str(root), "runs": exported})
        return 0
    total = sum(e["points"] for e in exported)
    ctx.line(f"wrote {total} points of {len(exported)} runs of {experiment.id} to {root}")
    ctx.line(f"open them with: tensorboard --logdir {root}")
    return 0
