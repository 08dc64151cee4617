"""How resources look on a terminal (rich tables and lines) and to scripts (JSON).

JSON output is the resources' proto3 JSON with field names as in the .proto files,
every scalar field present even when zero or empty, enums as names
("RUN_STATE_COMPLETED") and 64-bit integers as numbers, so a script can rely on a
key being there. Tables and lines are for people and may change.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table
from rich.text import Text

from runyard.server.domain.run_states import TERMINAL
from runyard.v1 import common_pb2, resources_pb2, watch_pb2

# Terminal states and how each looks.
STATE_STYLES = {
    "QUEUED": "dim",
    "ASSIGNED": "cyan",
    "STAGING": "cyan",
    "RUNNING": "bold blue",
    "UPLOADING": "cyan",
    "COMPLETED": "green",
    "FAILED": "bold red",
    "CANCELED": "yellow",
    "STOPPED_EARLY": "magenta",
    "PAUSED": "yellow",
    "ACTIVE": "bold blue",
}
# Columns of latest metrics in a runs table, beyond which they are left to `runyard metrics`.
MAX_METRIC_COLUMNS = 4


def make_console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when piped."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=200, soft_wrap=False)


# -- JSON -----------------------------------------------------------------------------------


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


#: The structured format `print_json` writes: "json", or "yaml" for `-o yaml` (set once per command).
_structured_output = "json"


def set_structured_output(fmt: str) -> None:
    """Choose what `print_json` writes for this process: the same documents as JSON or as YAML."""
    global _structured_output
    _structured_output = "yaml" if fmt == "yaml" else "json"


def print_json(value: Any, out: TextIO | None = None, lines: bool = False) -> None:
    """One indented document, or (lines=True) one compact document per line for streams.

    Under `-o yaml` the same document is written as YAML; a stream then writes one YAML
    document per update, each starting with `---`, so `yaml.safe_load_all` reads them.
    """
    stream = out or sys.stdout
    if _structured_output == "yaml":
        stream.write(yaml.safe_dump(value, sort_keys=False, allow_unicode=True, explicit_start=lines))
        stream.flush()
        return
    if lines:
        stream.write(json.dumps(value, separators=(",", ":"), sort_keys=False) + "\n")
    else:
        stream.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
    stream.flush()


# -- small formatters -----------------------------------------------------------------------


def run_state_name(state: int) -> str:
    if state not in common_pb2.RunState.values():
        return str(state)
    return common_pb2.RunState.Name(state).removeprefix("RUN_STATE_")  # type: ignore[arg-type]


def experiment_state_name(state: int) -> str:
    if state in resources_pb2.ExperimentState.values():
        return resources_pb2.ExperimentState.Name(state).removeprefix("EXPERIMENT_STATE_")  # type: ignore[arg-type]
    return str(state)


def failure_reason_name(reason: int) -> str:
    if reason in common_pb2.FailureReason.values():
        return common_pb2.FailureReason.Name(reason).removeprefix("FAILURE_REASON_")  # type: ignore[arg-type]
    return str(reason)


#: What a failure reason means for the user, where its name alone does not say what to do.
_FAILURE_HINTS = {
    common_pb2.FAILURE_REASON_OUT_OF_MEMORY: "the run used more memory than its resources.memory; ask for more "
    "or use less (it is not retried: it would run out again)",
    common_pb2.FAILURE_REASON_AGENT_SHUTDOWN: "its agent was stopped; the run is re-queued, not charged to "
    "max_restarts",
}
#: Failure reasons the runs table names next to FAILED (the user's own fix differs from a failing command's).
_TABLE_REASONS = (common_pb2.FAILURE_REASON_OUT_OF_MEMORY,)


def failure_text(reason: int, exit_code: int) -> str:
    """`runyard show`'s failure line: the reason, the exit code, and what the reason means when it needs saying."""
    text = failure_reason_name(reason)
    if exit_code:
        text += f" (exit code {exit_code})"
    hint = _FAILURE_HINTS.get(reason)  # type: ignore[call-overload]
    return f"{text}: {hint}" if hint else text


def styled_state(name: str) -> Text:
    return Text(name, style=STATE_STYLES.get(name, ""))


def parse_run_state(text: str) -> common_pb2.RunState.ValueType:
    """'running', 'RUNNING' or 'RUN_STATE_RUNNING' -> the enum value; ValueError names the choices."""
    name = text.strip().upper().removeprefix("RUN_STATE_")
    choices = [n.removeprefix("RUN_STATE_") for n in _state_names() if n != "RUN_STATE_UNSPECIFIED"]
    if name not in choices:
        raise ValueError(f"unknown run state {text!r} (choose from {', '.join(c.lower() for c in choices)})")
    return common_pb2.RunState.Value(f"RUN_STATE_{name}")


def _state_names() -> list[str]:
    return [v.name for v in common_pb2.RunState.DESCRIPTOR.values]


def fmt_time(ts: Timestamp | None, with_date: bool = True) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return _local(ts).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _local(ts: Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9).astimezone()


def fmt_time_us(time_us: int) -> str:
    if time_us <= 0:
        return ""
    return datetime.fromtimestamp(time_us / 1e6).astimezone().strftime("%H:%M:%S")


def fmt_time_iso_us(time_us: int) -> str:
    """A time in microseconds with its date, local ("" for none)."""
    if time_us <= 0:
        return ""
    return datetime.fromtimestamp(time_us / 1e6).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_value(value: Any) -> str:
    """A hyperparameter or metric value, short: floats to 4 significant digits."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def fmt_hyperparameters(run: resources_pb2.Run) -> str:
    params = json_format.MessageToDict(run)["hyperparameters"] if run.hyperparameters else {}
    return " ".join(f"{k}={fmt_value(v)}" for k, v in sorted(params.items()))


def fmt_duration(start: Timestamp, end: Timestamp | None) -> str:
    if start.seconds == 0:
        return ""
    stop = end.seconds + end.nanos / 1e9 if end is not None and end.seconds else datetime.now().timestamp()
    seconds = max(0, int(stop - (start.seconds + start.nanos / 1e9)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def runs_summary(runs_by_state: Mapping[str, int]) -> str:
    """'3 running, 5 queued, 2 completed' in the order of the state machine."""
    parts = []
    for value in common_pb2.RunState.values():
        name = common_pb2.RunState.Name(value)
        count = runs_by_state.get(name, 0)
        if count:
            parts.append(f"{count} {name.removeprefix('RUN_STATE_').lower()}")
    return ", ".join(parts)


def search_metric(experiment: resources_pb2.Experiment) -> tuple[str, str]:
    """The manifest's search metric and goal ("maximize"/"minimize"), or ('', '') when none."""
    try:
        manifest = yaml.safe_load(experiment.manifest_yaml or "") or {}
    except yaml.YAMLError:
        return "", ""
    search = manifest.get("search") if isinstance(manifest, dict) else None
    if not isinstance(search, dict):
        return "", ""
    return str(search.get("metric") or ""), str(search.get("goal") or "maximize").lower()


def metric_columns(runs: Sequence[resources_pb2.Run], first: str = "") -> list[str]:
    names = sorted({n for r in runs for n in r.latest_metrics})
    ordered = ([first] if first else []) + [n for n in names if n != first]
    return ordered[:MAX_METRIC_COLUMNS]


# -- tables ---------------------------------------------------------------------------------


def experiments_table(experiments: Iterable[resources_pb2.Experiment]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("EXPERIMENT", no_wrap=True)
    table.add_column("NAME")
    table.add_column("STATE", no_wrap=True)
    table.add_column("RUNS", justify="right")
    table.add_column("BY STATE")
    table.add_column("CREATED", no_wrap=True)
    for e in experiments:
        table.add_row(
            e.id,
            e.name,
            styled_state(experiment_state_name(e.state)),
            str(e.run_count),
            runs_summary(dict(e.runs_by_state)),
            fmt_time(e.created_at),
        )
    return table


def runs_table(runs: Sequence[resources_pb2.Run], metrics: Sequence[str] = (), with_experiment: bool = False) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("RUN", no_wrap=True)
    if with_experiment:
        table.add_column("EXPERIMENT", no_wrap=True)
    table.add_column("#", justify="right")
    table.add_column("STATE", no_wrap=True)
    table.add_column("ATTEMPT", justify="right")
    table.add_column("AGENT", no_wrap=True)
    table.add_column("HYPERPARAMETERS")
    for name in metrics:
        table.add_column(name, justify="right", no_wrap=True)
    for r in runs:
        row: list[str | Text] = [r.id]
        if with_experiment:
            row.append(r.experiment_id)
        queued = r.state == common_pb2.RUN_STATE_QUEUED and r.queue_position
        state = styled_state(run_state_name(r.state)) + (f" #{r.queue_position}" if queued else "")
        if r.state == common_pb2.RUN_STATE_FAILED and r.failure_reason in _TABLE_REASONS:
            state += f" ({failure_reason_name(r.failure_reason).lower().replace('_', ' ')})"
        row += [
            str(r.index),
            state,
            str(r.attempt) if r.attempt else "",
            # A queued run has no agent yet: say what it waits for instead.
            Text(r.waiting_reason, style="dim") if queued else r.agent_id,
            fmt_hyperparameters(r),
        ]
        row += [fmt_value(r.latest_metrics[m]) if m in r.latest_metrics else "" for m in metrics]
        table.add_row(*row)
    return table


def agents_table(agents: Iterable[resources_pb2.Agent]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("AGENT", "HOST", "STATE", "RUNTIME", "SLOTS", "GPUS", "RUNS", "FRAMEWORKS", "LABELS", "REGISTERED"):
        table.add_column(name, no_wrap=name in ("AGENT", "STATE", "RUNTIME", "REGISTERED"))
    for a in agents:
        frameworks = ", ".join(f"{f.name} {f.version}".strip() for f in a.frameworks)
        labels = " ".join(f"{k}={v}" for k, v in sorted(a.labels.items()))
        if not a.alive:
            state = Text("lost", style="red")
        elif a.draining:
            state = Text("draining", style="yellow")
        else:
            state = Text("up", style="green")
        table.add_row(
            a.id,
            a.hostname,
            state,
            a.runtime or "process",
            f"{len(a.run_ids)}/{a.slots}",
            fmt_gpus(a),
            "\n".join(a.run_ids) or "-",
            frameworks,
            labels,
            fmt_time(a.registered_at),
        )
    return table


def fmt_gpus(agent: resources_pb2.Agent) -> str:
    """'4x H100 (80 GiB)', one part per model; the bare ids when only those are known."""
    if not agent.gpus:
        return ",".join(agent.gpu_ids) or "-"
    by_model: dict[tuple[str, int], int] = {}
    for gpu in agent.gpus:
        key = (gpu.model or "GPU", gpu.memory_bytes)
        by_model[key] = by_model.get(key, 0) + 1
    parts = []
    for (model, memory), count in sorted(by_model.items()):
        size = f" ({memory / 1024**3:.0f} GiB)" if memory else ""
        parts.append(f"{count}x {model}{size}")
    return ", ".join(parts)


def key_values(rows: Sequence[tuple[str, str | Text]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in rows:
        if value:
            table.add_row(key, value)
    return table


def run_details(run: resources_pb2.Run) -> Table:
    state = run_state_name(run.state)
    if run.cancel_requested and run.state not in TERMINAL:
        state += " (cancel requested)"
    failure = failure_text(run.failure_reason, run.exit_code) if run.failure_reason else ""
    preempted = f"by run {run.preempted_by} ({run.preempt_rule})" if run.preempted_by else ""
    return key_values(
        [
            ("run", run.id),
            ("experiment", run.experiment_id),
            ("index", str(run.index)),
            ("state", styled_state(state)),
            ("waiting", run.waiting_reason),
            ("in queue", f"#{run.queue_position} of account {run.account_id}" if run.queue_position else ""),
            ("attempt", str(run.attempt) if run.attempt else ""),
            ("agent", run.agent_id),
            ("gpus", ",".join(run.gpu_ids)),
            ("command", run.command),
            ("hyperparameters", fmt_hyperparameters(run)),
            ("results", run.results_uri),
            ("failure", failure),
            ("preempted", preempted),
            ("preemptible", "no (manifest preemptible: false)" if run.not_preemptible else ""),
            ("message", run.message),
            ("created", fmt_time(run.created_at)),
            ("assigned", fmt_time(run.assigned_at)),
            ("started", fmt_time(run.started_at)),
            ("ended", fmt_time(run.ended_at)),
            ("duration", fmt_duration(run.started_at, run.ended_at) if run.started_at.seconds else ""),
            ("billed", f"{run.gpu_seconds:,.3f} GPU-seconds" if run.gpu_seconds else ""),
        ]
    )




def metrics_latest_table(points: Sequence[common_pb2.MetricPoint], totals: Mapping[str, int] | None = None) -> Table:
    """One row per metric: its last step and value, and how many points it has.

    `totals`: each metric's point count when `points` were downsampled (GetRunMetrics' point_counts).
    """
    latest: dict[str, common_pb2.MetricPoint] = {}
    counts: dict[str, int] = {}
    for p in points:
        counts[p.name] = counts.get(p.name, 0) + 1
        if p.name not in latest or (p.step, p.time_us) >= (latest[p.name].step, latest[p.name].time_us):
            latest[p.name] = p
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("METRIC", "left"), ("STEP", "right"), ("VALUE", "right"), ("POINTS", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name in sorted(latest):
        p = latest[name]
        table.add_row(name, str(p.step), fmt_value(p.value), str((totals or counts).get(name, counts[name])))
    return table


def metrics_points_table(points: Sequence[common_pb2.MetricPoint]) -> Table:
    """One row per step, one column per metric."""
    names = sorted({p.name for p in points})
    by_step: dict[int, dict[str, float]] = {}
    for p in points:
        by_step.setdefault(p.step, {})[p.name] = p.value
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("STEP", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for step in sorted(by_step):
        values = by_step[step]
        table.add_row(str(step), *[fmt_value(values[n]) if n in values else "" for n in names])
    return table


def latest_values(points: Sequence[common_pb2.MetricPoint]) -> dict[str, dict[str, Any]]:
    latest: dict[str, common_pb2.MetricPoint] = {}
    for p in points:
        if p.name not in latest or (p.step, p.time_us) >= (latest[p.name].step, latest[p.name].time_us):
            latest[p.name] = p
    return {n: {"step": p.step, "value": p.value} for n, p in sorted(latest.items())}


# -- watch lines ----------------------------------------------------------------------------

#: MetricPoint.source of a point the agent parsed from a line the run printed (agent/metrics.py).
METRIC_SOURCE_STDOUT = "stdout"



def update_lines(update: watch_pb2.RunUpdate, with_run: bool, show_logs: bool = True) -> list[Text]:
    """The lines a person sees for one update of a watch."""
    when = fmt_time(update.time, with_date=False) if update.HasField("time") else ""
    prefix = Text(f"{when} ", style="dim")
    if with_run:
        prefix.append(f"{update.run_id} ", style="bold")
    body = update.WhichOneof("body")
    if body == "status":
        return [prefix + status_text(update.status)]
    if body == "queue":
        return [prefix + Text(f"#{update.queue.position} in the queue: {update.queue.reason}", style="yellow")]
    if body == "search":
        return [prefix + search_text(update.search)]
    if body == "metrics":
        by_step: dict[int, list[str]] = {}
        for p in update.metrics.points:
            # A point parsed from a printed line was just shown as that line: printing it again as a
            # point would show every value twice. Points from runyard.log or TensorBoard files have
            # no line of their own, and with --no-logs no line is shown, so those are printed.
            if show_logs and p.source == METRIC_SOURCE_STDOUT:
                continue
            by_step.setdefault(p.step, []).append(f"{p.name}={fmt_value(p.value)}")
        return [prefix + Text(f"step {step}: " + " ".join(vals), style="magenta") for step, vals in by_step.items()]
    if body == "logs" and show_logs:
        out = []
        for line in update.logs.lines:
            style = "red" if line.stream == common_pb2.LOG_STREAM_STDERR else ""
            if line.stream == common_pb2.LOG_STREAM_AGENT:
                out.append(prefix + Text(f"[agent] {line.text}", style="dim italic"))
            else:
                out.append(prefix + Text(f"| {line.text}", style=style))
        return out
    return []


def search_text(search: watch_pb2.SearchUpdate) -> Text:
    """A decision of the experiment's searcher, in words."""
    kind = watch_pb2.SearchUpdate.Kind
    if search.kind == kind.KIND_TRIAL_STARTED:
        values = " ".join(f"{k}={v}" for k, v in sorted(search.hyperparameters.items()))
        return Text(f"trial started {values}".rstrip(), style="cyan")
    if search.kind == kind.KIND_PROMOTED:
        return Text(f"promoted at rung {search.rung} ({search.level}): {fmt_value(search.value)}", style="green")
    if search.kind == kind.KIND_STOPPED:
        if search.reason == "asha":
            return Text(
                f"stopped at rung {search.rung} ({search.level}): {fmt_value(search.value)} missed the cut",
                style="magenta",
            )
        return Text(f"stopped early: {search.reason}", style="magenta")
    if search.kind == kind.KIND_NEW_BEST:
        return Text(f"new best {fmt_value(search.value)} at step {search.step}", style="bold green")
    if search.kind == kind.KIND_BUDGET_SPENT:
        return Text(f"budget spent: {search.reason}", style="yellow")
    if search.kind == kind.KIND_COMPLETED:
        return Text(f"search completed: {search.reason}", style="bold")
    return Text("")


def status_text(status: watch_pb2.RunStatusChange) -> Text:
    name = run_state_name(status.state)
    if status.cancel_requested:
        said = f" ({status.message})" if status.message else ""
        return Text(f"cancel requested{said}", style="yellow")
    text = styled_state(name)
    details = []
    if status.attempt:
        details.append(f"attempt {status.attempt}")
    if status.agent_id:
        details.append(f"on {status.agent_id}")
    if status.failure_reason:
        details.append(failure_reason_name(status.failure_reason).lower().replace("_", " "))
    if status.exit_code and status.state != common_pb2.RUN_STATE_UPLOADING:
        details.append(f"exit code {status.exit_code}")
    if details:
        text.append(" " + " ".join(details))
    if status.message:
        text.append(f": {status.message}")
    return text


def log_line_text(line: common_pb2.LogLine) -> Text:
    if line.stream == common_pb2.LOG_STREAM_AGENT:
        return Text(f"[agent] {line.text}", style="dim italic")
    if line.stream == common_pb2.LOG_STREAM_STDERR:
        return Text(line.text, style="red")
    return Text(line.text)
