"""The client-side commands of `runyard`: everything that talks to a running server.

Each command takes the parsed arguments and a `Context`, prints for a person (tables,
lines) or for a script (`-o json`), and returns the exit status. Failures are raised
as `ClientError` and printed by `cli.main` as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runyard.client import plots, render, views
from runyard.client.auth import tls_credentials
from runyard.client.errors import ClientError
from runyard.client.live import RunsBoard
from runyard.client.packing import pack_code
from runyard.client.progress import transfer_bar
from runyard.client.sdk import Client
from runyard.config import Settings
from runyard.server.domain.units import format_bytes
from runyard.v1 import common_pb2, resources_pb2

if TYPE_CHECKING:
    from runyard.objectstore import ObjectInfo, ObjectStore

#: How a run may end and still count as done well (a run its searcher stopped early did its job).
_DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_STOPPED_EARLY)


@dataclass
class Context:
    """What every command needs: settings, output mode, consoles and one connected client."""

    settings: Settings
    output: str = "table"
    out: Console = field(default_factory=render.make_console)
    err: Console = field(default_factory=lambda: render.make_console(stderr=True))
    _client: Client | None = None

    def __post_init__(self) -> None:
        # Every `render.print_json` of this command writes the structured format asked for (json or yaml).
        render.set_structured_output("yaml" if self.output == "yaml" else "json")

    @property
    def json(self) -> bool:
        """True when a script reads the output: JSON or YAML documents instead of tables."""
        return self.output in ("json", "yaml")

    def client(self) -> Client:
        """Connect on first use; a dead endpoint fails here, quickly and in one line."""
        if self._client is None:
            client = Client(
                self.settings.endpoint,
                api_key=self.settings.api_key or "",
                credentials=tls_credentials(self.settings.tls_ca),
            )
            try:
                client.wait_ready()
            except ClientError:
                client.close()
                raise
            self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def notice(self, message: str) -> None:
        """A remark for the person at the terminal (stderr), never mixed into JSON output."""
        self.err.print(Text(message, style="dim"), highlight=False)

    def line(self, text: str | Text) -> None:
        """Print without rich markup, so run output with [brackets] prints as is."""
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)


#: What ids look like, for the hint of a "not found" (ids are 10 base32 characters after the prefix).
ID_HINT = "experiment ids look like exp-x7k2m4q9ab and run ids like run-p3n8c5t2vd"


def id_kind(identifier: str) -> str:
    """'experiment' or 'run' from the id's prefix.

    Anything else cannot exist, so it is answered like an unknown id ("not found"), with a hint
    of what ids look like and where to find them, without asking the server.
    """
    if identifier.startswith("exp-"):
        return "experiment"
    if identifier.startswith("run-"):
        return "run"
    raise ClientError(
        f"{identifier!r} not found: {ID_HINT} (`runyard list` shows experiments, `runyard list runs` runs)"
    )


def _require_run(identifier: str) -> str:
    if not identifier.startswith("run-"):
        raise ClientError(
            f"run {identifier!r} not found: run ids look like run-p3n8c5t2vd "
            "(`runyard show EXPERIMENT` lists an experiment's runs)"
        )
    return identifier


# -- submit ---------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, ctx: Context) -> int:
    manifest = Path(args.manifest)
    try:
        manifest_yaml = manifest.read_text(encoding="utf-8")
    except OSError as e:
        raise ClientError(f"cannot read manifest {manifest}: {e.strerror}") from None
    code_dir = Path(args.code_dir) if args.code_dir else manifest.resolve().parent
    if args.code_dir and not code_dir.is_dir():
        raise ClientError(f"code directory {code_dir} is not a folder")
    client = ctx.client()
    code_uri = ""
    if not args.no_code:
        code_uri = _upload_code(client, ctx, code_dir)
    # Retries inside create_experiment reuse this id, so the experiment is created once.
    request_id = args.request_id or str(uuid.uuid4())
    from_run = getattr(args, "from_run", None) or ""
    created = client.create_experiment(manifest_yaml, code_uri, request_id, from_run=from_run)
    experiment = client.get_experiment(created.id)
    if getattr(args, "quiet", False):
        ctx.line(experiment.id)  # EXP=$(runyard submit -q MANIFEST)
    elif ctx.json:
        render.print_json(render.to_dict(experiment), lines=args.watch)
    else:
        if experiment.searching:
            ctx.out.print(
                f"Submitted experiment [bold]{experiment.id}[/] ({experiment.name}): its searcher starts runs"
                f" as slots free ({experiment.run_count} so far)"
            )
        else:
            ctx.out.print(
                f"Submitted experiment [bold]{experiment.id}[/] ({experiment.name}) with {experiment.run_count} runs"
            )
        metric, _ = render.search_metric(experiment)
        if experiment.runs:
            ctx.out.print(render.runs_table(list(experiment.runs), render.metric_columns(experiment.runs, metric)))
        if not args.watch:
            ctx.out.print(f"\nFollow it with: runyard watch {experiment.id}", markup=False, highlight=False)
    if args.watch:
        return _watch(
            ctx, experiment.id, "experiment", show_logs=not args.no_logs, json_lines=ctx.json,
            table=getattr(args, "table", False),
        )  # fmt: skip
    return 0


def _upload_code(client: Client, ctx: Context, code_dir: Path) -> str:
    limit = int(client.server_info().max_code_bytes)
    packed = pack_code(code_dir, limit)
    try:
        size = packed.stat().st_size
        with transfer_bar(ctx.err, "uploading code", size) as advance:
            uploaded = client.upload_code(packed, advance)
    finally:
        packed.unlink(missing_ok=True)
    return uploaded.code_uri


# -- list / show ----------------------------------------------------------------------------


#: Seconds between two looks of `runyard list --watch`.
LIST_WATCH_INTERVAL_S = 2.0


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    what = args.what or ("runs" if args.experiment or args.state else "experiments")
    if what == "experiments" and (args.experiment or args.state):
        raise ClientError("--experiment and --state filter runs: use `runyard list runs ...`")
    if getattr(args, "watch", False):
        return _list_watch(args, ctx, what)
    items, table = _list_once(args, ctx, what)
    if getattr(args, "quiet", False):
        for item in items:  # RUN=$(runyard list runs --experiment EXP -q | head -n 1)
            ctx.line(str(item["id"]))
    elif ctx.json:
        render.print_json(items)
    elif table is None:
        none = "no experiments yet: submit one with `runyard submit MANIFEST`"
        ctx.err.print(none if what == "experiments" else "no runs match", markup=False)
    else:
        ctx.out.print(table)
    return 0


def _list_once(args: argparse.Namespace, ctx: Context, what: str) -> tuple[list[dict[str, Any]], Table | None]:
    """The listed resources for scripts, and their table for people (None when there are none)."""
    limit = args.limit if args.limit and args.limit > 0 else None
    client = ctx.client()
    if what == "experiments":
        experiments = list(_take(client.list_experiments(), limit))
        return [render.to_dict(e) for e in experiments], render.experiments_table(experiments) if experiments else None
    states = []
    for text in args.state or []:
        for part in text.split(","):
            try:
                states.append(render.parse_run_state(part))
            except ValueError as e:
                raise ClientError(str(e)) from None
    runs = list(_take(client.list_runs(args.experiment, states), limit))
    table = render.runs_table(runs, render.metric_columns(runs), with_experiment=not args.experiment) if runs else None
    return [render.to_dict(r) for r in runs], table


def _pause(seconds: float) -> None:
    """The wait between two looks of `list --watch` (a seam for tests)."""
    time.sleep(seconds)


def _list_watch(args: argparse.Namespace, ctx: Context, what: str) -> int:
    """Redraw the list every LIST_WATCH_INTERVAL_S until Ctrl-C, like `kubectl get -w` / `watch`.

    For scripts (-o json/yaml) a new document is written each time the list changes.
    """
    interval = getattr(args, "interval", None) or LIST_WATCH_INTERVAL_S
    last: list[dict[str, Any]] | None = None
    empty = Text("no experiments yet" if what == "experiments" else "no runs match", style="dim")
    try:
        if ctx.json:
            while True:
                items, _ = _list_once(args, ctx, what)
                if items != last:
                    render.print_json(items, lines=True)
                    last = items
                _pause(interval)
        with Live(empty, console=ctx.out, refresh_per_second=4) as live:
            while True:
                _, table = _list_once(args, ctx, what)
                live.update(table if table is not None else empty)
                _pause(interval)
    except KeyboardInterrupt:
        return 0


def _take(items: Iterator[Any], limit: int | None) -> Iterator[Any]:
    for n, item in enumerate(items):
        if limit is not None and n >= limit:
            return
        yield item


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    kind = id_kind(args.id)
    client = ctx.client()
    if kind == "experiment":
        experiment = client.get_experiment(args.id)
        if ctx.json:
            render.print_json({**render.to_dict(experiment), "leaderboard": views.leaderboard_json(experiment)})
            return 0
        _print_experiment(ctx, experiment)
        return 0
    reply = client.get_run_reply(args.id)
    run = reply.run
    if ctx.json:
        render.print_json(views.run_json(reply))
        return 0
    ctx.out.print(render.run_details(run))
    if run.latest_metrics:
        ctx.out.print()
        ctx.out.print(
            render.key_values([(f"  {k}", render.fmt_value(v)) for k, v in sorted(run.latest_metrics.items())]),
        )
    for table in (views.attempts_table(reply), views.checkpoints_table(reply)):
        if table is not None:
            ctx.out.print()
            ctx.out.print(table)
    return 0


def _search_status(experiment: resources_pb2.Experiment) -> str:
    """'searching' while the searcher may add runs, then why it stopped ("" for a plain experiment)."""
    if experiment.state == resources_pb2.EXPERIMENT_STATE_PAUSED:
        return f"paused (`runyard resume {experiment.id}` goes on)"
    if experiment.searching:
        return "searching (the searcher adds runs as slots free)"
    return f"ended: {experiment.end_reason}" if experiment.end_reason else ""


def _print_experiment(ctx: Context, experiment: resources_pb2.Experiment) -> None:
    metric, _ = render.search_metric(experiment)
    ctx.out.print(
        render.key_values(
            [
                ("experiment", experiment.id),
                ("name", experiment.name),
                ("state", render.styled_state(render.experiment_state_name(experiment.state))),
                ("runs", f"{experiment.run_count} ({render.runs_summary(dict(experiment.runs_by_state))})"),
                ("search", _search_status(experiment)),
                ("code", experiment.code_uri),
                ("created", render.fmt_time(experiment.created_at)),
                ("ended", render.fmt_time(experiment.ended_at)),
            ]
        )
    )
    runs = sorted(experiment.runs, key=lambda r: r.index)
    if not runs:
        return
    ctx.out.print()
    if not metric:
        ctx.out.print(render.runs_table(runs, render.metric_columns(runs)))
        return
    # A search metric: the runs as a leaderboard, best first.
    ctx.out.print(views.leaderboard_table(experiment))
    if best := views.best_line(experiment):
        ctx.out.print(f"\n{best}", markup=False, highlight=False)


# -- watch / logs / metrics -----------------------------------------------------------------


def cmd_watch(args: argparse.Namespace, ctx: Context) -> int:
    return _watch(
        ctx, args.id, id_kind(args.id), show_logs=not args.no_logs, json_lines=ctx.json,
        table=getattr(args, "table", False),
    )  # fmt: skip


def _watch(ctx: Context, identifier: str, kind: str, show_logs: bool, json_lines: bool, table: bool = False) -> int:
    """Print updates until the run or experiment ends; 0 if it completed, 1 otherwise.

    `table`: instead of a line per update, one live table of the runs (state, step, latest
    metrics) redrawn in place as updates come.
    """
    client = ctx.client()
    notice = ctx.notice
    updates = (
        client.watch_run(identifier, on_retry=notice)
        if kind == "run"
        else client.watch_experiment(identifier, on_retry=notice)
    )
    finals: dict[str, int] = {}
    seen: set[str] = set()
    board = _board(client, identifier, kind) if table and not json_lines else None
    with contextlib.ExitStack() as stack:
        live = None
        if board is not None:
            live = stack.enter_context(Live(board.table(), console=ctx.out, refresh_per_second=4))
        for update in updates:
            if json_lines:
                render.print_json(render.to_dict(update), lines=True)
            elif board is not None and live is not None:
                board.apply(update)
                live.update(board.table())
            else:
                for text in render.update_lines(update, with_run=kind == "experiment", show_logs=show_logs):
                    ctx.line(text)
            if update.WhichOneof("body") != "search":
                seen.add(update.run_id)
            if update.HasField("status") and update.status.final:
                finals[update.run_id] = update.status.state
    if board is not None and not ctx.out.is_terminal:
        ctx.out.print()  # piped, Live leaves its last table without a line end
    # The stream itself says how each run ended; ask the server only if it did not.
    if kind == "run":
        state = finals[identifier] if identifier in finals else client.get_run(identifier).state
        ended_ok = state in _DONE
        summary = f"run {identifier} {render.run_state_name(state)}"
    elif seen and seen == finals.keys():
        ended_ok = all(state in _DONE for state in finals.values())
        by_state: dict[str, int] = {}
        for state in finals.values():
            by_state[common_pb2.RunState.Name(state)] = by_state.get(common_pb2.RunState.Name(state), 0) + 1  # type: ignore[arg-type]
        summary = f"experiment {identifier} ended: {render.runs_summary(by_state)}"
    else:
        experiment = client.get_experiment(identifier)
        ended_ok = experiment.state == resources_pb2.EXPERIMENT_STATE_COMPLETED
        summary = (
            f"experiment {identifier} {render.experiment_state_name(experiment.state)}: "
            f"{render.runs_summary(dict(experiment.runs_by_state))}"
        )
    if not json_lines:
        ctx.err.print(summary, markup=False, highlight=False)
    return 0 if ended_ok else 1


def _board(client: Client, identifier: str, kind: str) -> RunsBoard:
    """The live table's starting point: the runs as the server knows them now."""
    if kind == "run":
        run = client.get_run(identifier)
        experiment = client.get_experiment(run.experiment_id)
        return RunsBoard([run], render.search_metric(experiment)[0])
    experiment = client.get_experiment(identifier)

    def describe(run_id: str) -> resources_pb2.Run | None:
        try:
            return client.get_run(run_id)
        except ClientError:
            return None

    return RunsBoard(experiment.runs, render.search_metric(experiment)[0], describe)


def cmd_logs(args: argparse.Namespace, ctx: Context) -> int:
    """A run's output; for an experiment, every run's output, each line after its run id."""
    kind = id_kind(args.run)
    client = ctx.client()
    with_run = kind == "experiment"
    if args.follow:
        updates = (
            client.watch_run(args.run, on_retry=ctx.notice)
            if kind == "run"
            else client.watch_experiment(args.run, on_retry=ctx.notice)
        )
        for update in updates:
            if not update.HasField("logs"):
                continue
            for line in update.logs.lines:
                _print_log_line(ctx, line, update.run_id if with_run else "")
        return 0
    if kind == "run":
        batches = [(args.run, client.get_run_logs(args.run))]
    else:
        runs = sorted(client.get_experiment(args.run).runs, key=lambda r: r.index)
        batches = [(run.id, client.get_run_logs(run.id)) for run in runs]
    tail = args.tail if args.tail and args.tail > 0 else 0
    batches = [(run_id, lines[-tail:] if tail else lines) for run_id, lines in batches]
    if ctx.json:
        if with_run:
            render.print_json([{"run_id": r, **render.to_dict(line)} for r, lines in batches for line in lines])
        else:
            render.print_json([render.to_dict(line) for line in batches[0][1]])
        return 0
    for run_id, lines in batches:
        for line in lines:
            _print_log_line(ctx, line, run_id if with_run else "")
    return 0


def _print_log_line(ctx: Context, line: common_pb2.LogLine, run_id: str) -> None:
    if ctx.json:
        render.print_json({"run_id": run_id, **render.to_dict(line)} if run_id else render.to_dict(line), lines=True)
        return
    text = render.log_line_text(line)
    ctx.line(Text(f"{run_id} ", style="bold") + text if run_id else text)


#: Points per metric that `runyard metrics` shows in a table or plot unless --max-points says otherwise:
#: plenty for a terminal, and a 200,000-point history comes down in a blink.
METRICS_VIEW_MAX_POINTS = 500


def cmd_metrics(args: argparse.Namespace, ctx: Context) -> int:
    run_id = _require_run(args.run)
    max_points = getattr(args, "max_points", None)
    if max_points is None:
        max_points = 0 if ctx.json else METRICS_VIEW_MAX_POINTS
    reply = ctx.client().metric_history(run_id, args.name or (), max_points)
    points, counts = list(reply.points), dict(reply.point_counts)
    if ctx.json:
        render.print_json(
            {
                "run_id": run_id,
                "latest": render.latest_values(points),
                "point_counts": dict(sorted(counts.items())),
                "points": [render.to_dict(p) for p in points],
            }
        )
        return 0
    if not points:
        ctx.err.print(f"no metric points for {run_id} yet", markup=False)
        return 0
    if getattr(args, "plot", False):
        plots.print_plot(ctx.out, plots.curves_of_run(points), title=run_id)
        return 0
    ctx.out.print(render.metrics_points_table(points) if args.all else render.metrics_latest_table(points, counts))
    if args.all and any(counts.get(name, 0) > n for name, n in _per_metric(points).items()):
        ctx.err.print(
            f"at most {max_points} points per metric shown (evenly spaced by step, with the first, last, lowest "
            "and highest); --max-points 0 shows every point",
            markup=False,
        )
    return 0


def _per_metric(points: list[common_pb2.MetricPoint]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in points:
        counts[p.name] = counts.get(p.name, 0) + 1
    return counts


# -- cancel ---------------------------------------------------------------------------------


def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    kind = id_kind(args.id)
    client = ctx.client()
    if kind == "experiment":
        experiment = client.cancel_experiment(args.id)
        if ctx.json:
            render.print_json(render.to_dict(experiment))
        else:
            ctx.out.print(
                f"cancel requested for {experiment.id}: {render.runs_summary(dict(experiment.runs_by_state))}",
                markup=False,
                highlight=False,
            )
        return 0
    run = client.cancel_run(args.id)
    if ctx.json:
        render.print_json(render.to_dict(run))
    else:
        ctx.out.print(
            f"cancel requested for {run.id} (now {render.run_state_name(run.state)})", markup=False, highlight=False
        )
    return 0


def cmd_pause(args: argparse.Namespace, ctx: Context) -> int:
    return _pause_or_resume(args, ctx, pause=True)


def cmd_resume(args: argparse.Namespace, ctx: Context) -> int:
    return _pause_or_resume(args, ctx, pause=False)


def _pause_or_resume(args: argparse.Namespace, ctx: Context, pause: bool) -> int:
    if id_kind(args.experiment) != "experiment":
        raise ClientError(f"{args.experiment}: pause and resume take an experiment id (exp-...)")
    client = ctx.client()
    reason = args.reason or ""
    if pause:
        experiment = client.pause_experiment(args.experiment, reason)
    else:
        experiment = client.resume_experiment(args.experiment, reason)
    if ctx.json:
        render.print_json(render.to_dict(experiment))
        return 0
    what = "paused" if pause else "resumed"
    ctx.out.print(
        f"{experiment.id} {what} ({render.experiment_state_name(experiment.state)}): "
        f"{render.runs_summary(dict(experiment.runs_by_state))}",
        markup=False,
        highlight=False,
    )
    return 0


# -- object storage: download, data upload, data ls ------------------------------------------


def _store(ctx: Context) -> ObjectStore:
    from runyard.objectstore import ObjectStoreError, open_store

    try:
        return open_store(ctx.settings.storage_root, ctx.settings.s3_endpoint_url)
    except ObjectStoreError as e:
        raise ClientError(str(e)) from None


@contextmanager
def _storage_errors() -> Iterator[None]:
    from runyard.objectstore import ObjectStoreError

    try:
        yield
    except ObjectStoreError as e:
        raise ClientError(str(e)) from None


def cmd_download(args: argparse.Namespace, ctx: Context) -> int:
    run_id = _require_run(args.run)
    run = ctx.client().get_run(run_id)
    if not run.results_uri:
        raise ClientError(f"run {run.id} has no results location")
    dest = Path(args.dest) if args.dest else Path(run.id)
    objects = results_objects(ctx, run, everything=getattr(args, "all", False))
    if not objects:
        state = render.run_state_name(run.state)
        hint = "" if run.state == common_pb2.RUN_STATE_COMPLETED else "; results are stored when the run completes"
        raise ClientError(f"no results at {run.results_uri} (run {run.id} is {state}{hint})")
    count, total = download_results(ctx, run, dest, objects)
    if ctx.json:
        render.print_json(
            {"run_id": run.id, "results_uri": run.results_uri, "dest": str(dest), "files": count, "bytes": total}
        )
    else:
        ctx.out.print(
            f"downloaded {_files(count)} ({format_bytes(total)}) from {run.results_uri} to {dest}",
            markup=False,
            highlight=False,
        )
    return 0


#: Runyard's own folders under a run's results prefix: its checkpoints and the files of attempts that did not
#: complete (docs/checkpoints.md). Not the run's results: `download --all` brings them too.
RUNYARD_FOLDERS = ("checkpoints/", "attempts/")


def results_objects(ctx: Context, run: resources_pb2.Run, everything: bool = False) -> list[ObjectInfo]:
    """The run's results under its prefix (none before it completes); `everything`: its checkpoints and
    earlier attempts' files too."""
    with _storage_errors():
        objects = list(_store(ctx).list(run.results_uri))
    if everything:
        return objects
    prefix = run.results_uri.rstrip("/") + "/"
    return [o for o in objects if not o.uri.removeprefix(prefix).startswith(RUNYARD_FOLDERS)]


def download_results(ctx: Context, run: resources_pb2.Run, dest: Path, objects: list[ObjectInfo]) -> tuple[int, int]:
    """Download the run's results into `dest` with a progress bar; (files, bytes)."""
    total = sum(o.size for o in objects)
    with _storage_errors(), transfer_bar(ctx.err, f"downloading {run.id}", total) as advance:
        count = _store(ctx).download_objects(run.results_uri, objects, dest, advance)
    return count, total


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def cmd_data_upload(args: argparse.Namespace, ctx: Context) -> int:
    local = Path(args.local)
    if not local.exists():
        raise ClientError(f"{local} does not exist")
    store = _store(ctx)
    uri: str = args.uri
    with _storage_errors():
        if local.is_dir():
            total = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
            with transfer_bar(ctx.err, f"uploading {local.name}", total) as advance:
                count = store.upload_dir(local, uri, advance)
        else:
            if uri.endswith("/"):
                uri += local.name
            total = local.stat().st_size
            with transfer_bar(ctx.err, f"uploading {local.name}", total) as advance:
                store.upload_file(local, uri, advance)
            count = 1
    if ctx.json:
        render.print_json({"source": str(local), "uri": uri, "files": count, "bytes": total})
    else:
        ctx.out.print(f"uploaded {_files(count)} ({format_bytes(total)}) to {uri}", markup=False, highlight=False)
    return 0


def cmd_data_ls(args: argparse.Namespace, ctx: Context) -> int:
    store = _store(ctx)
    with _storage_errors():
        objects = store.list(args.uri)
    if ctx.json:
        render.print_json([{"uri": o.uri, "size": o.size} for o in objects])
        return 0
    if not objects:
        ctx.err.print(f"no objects under {args.uri}", markup=False, highlight=False)
        return 0
    for o in objects:
        ctx.line(f"{format_bytes(o.size):>10}  {o.uri}")
    ctx.err.print(
        f"{len(objects)} object{'s' if len(objects) != 1 else ''}, {format_bytes(sum(o.size for o in objects))}",
        markup=False,
        highlight=False,
    )
    return 0


# -- admin ----------------------------------------------------------------------------------


def cmd_admin_rebuild(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.client().rebuild_projections()
    if ctx.json:
        render.print_json(render.to_dict(reply))
    else:
        ctx.out.print(
            f"rebuilt the read models: {reply.events_replayed} events replayed in {reply.seconds:.2f} s",
            markup=False,
            highlight=False,
        )
    return 0


def cmd_admin_agents(args: argparse.Namespace, ctx: Context) -> int:
    agents = ctx.client().list_agents()
    if ctx.json:
        render.print_json([render.to_dict(a) for a in agents])
    elif not agents:
        ctx.err.print("no agents registered: start one with `runyard agent`", markup=False)
    else:
        ctx.out.print(render.agents_table(agents))
    return 0


def cmd_admin_info(args: argparse.Namespace, ctx: Context) -> int:
    info = ctx.client().server_info()
    if ctx.json:
        render.print_json({"endpoint": ctx.settings.endpoint, **render.to_dict(info)})
    else:
        ctx.out.print(
            render.key_values(
                [
                    ("endpoint", ctx.settings.endpoint),
                    ("version", info.version),
                    ("code uri prefix", info.code_uri_prefix),
                    ("max code size", format_bytes(info.max_code_bytes)),
                    ("log head position", str(info.head_position)),
                    *(
                        (
                            f"read model {f.read_model}",
                            f"skipped the {f.event_type or 'event'} at position {f.position}: {f.error}",
                        )
                        for f in info.read_model_failures
                    ),
                ]
            )
        )
    return 0


# -- config ---------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace, ctx: Context) -> int:
    """Show every setting with the layer it came from: the answer to "why does it connect there?"."""
    import dataclasses

    from runyard.config import config_path, state_path

    rows = {f.name: getattr(ctx.settings, f.name) for f in dataclasses.fields(ctx.settings) if f.name != "sources"}
    if rows.get("api_key"):
        rows["api_key"] = mask_secret(rows["api_key"])
    if ctx.json:
        render.print_json(
            {
                "config_file": str(config_path()),
                "state_file": str(state_path()),
                "settings": {k: {"value": v, "source": ctx.settings.source(k)} for k, v in rows.items()},
            }
        )
        return 0
    table = render.key_values([])
    for key, value in rows.items():
        if value is None:
            continue
        table.add_row(key, Text(f"{render.fmt_value(value)}  ({ctx.settings.source(key)})"))
    ctx.out.print(table)
    ctx.out.print(f"\nconfig file: {config_path()}\nstate file:  {state_path()}", markup=False, highlight=False)
    return 0


def mask_secret(secret: str) -> str:
    """Enough of a key to tell which one it is, never enough to use it."""
    return f"{secret[:6]}...({len(secret)} characters)" if len(secret) > 12 else "***"


Command = Callable[[argparse.Namespace, Context], int]
