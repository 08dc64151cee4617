"""`runyard usage`: billed GPU time, per account and period or per attempt.

Dates are UTC days, as on the bill: `--from 2026-11-01 --to 2026-11-30` covers
November 1st 00:00 up to the end of November 30th. A full timestamp
(`2026-11-27T12:00:00Z`) is taken as an exact instant instead (`--to` then
excludes it). `-o csv` writes exact figures (every digit of the float) for
spreadsheets; `-o json` the UsageService reply as is.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from rich.table import Table

from runyard.client import render
from runyard.client.commands import Context
from runyard.client.errors import ClientError
from runyard.v1 import usage_service_pb2

USAGE_COLUMNS = ("account_id", "period", "gpu_model", "gpu_seconds", "attempts")
ATTEMPT_COLUMNS = (
    "run_id",
    "attempt",
    "account_id",
    "experiment_id",
    "agent_id",
    "gpus",
    "gpu_model",
    "started_at",
    "ended_at",
    "gpu_seconds",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `usage` command (its -o also takes csv)."""
    p = sub.add_parser(
        "usage",
        help="billed GPU time per account and day or month (or per run attempt)",
        description="Billed GPU time: from the moment a run is given GPUs until its results are stored.",
        parents=[common],
    )
    p.set_defaults(func=cmd_usage)
    p.add_argument("what", nargs="?", choices=("runs",), help="runs: one line per billed attempt")
    p.add_argument(
        "-o", "--output", choices=("table", "json", "yaml", "csv"), default=argparse.SUPPRESS,
        help="table for people (default), json, yaml or csv for scripts",
    )  # fmt: skip
    p.add_argument("--account", default="", help="this account (default: yours; admins: every account)")
    p.add_argument("--from", dest="start", metavar="DATE", help="first UTC day counted, YYYY-MM-DD (or a timestamp)")
    p.add_argument("--to", dest="end", metavar="DATE", help="last UTC day counted, YYYY-MM-DD (or a timestamp)")
    p.add_argument("--period", choices=("day", "month"), default="day", help="group by UTC day (default) or month")
    p.add_argument("--experiment", default="", metavar="EXPERIMENT_ID", help="with `runs`: only this experiment")


def parse_bound(text: str | None, flag: str, end: bool) -> datetime | None:
    """A day (the start of it; for --to the end of it) or an exact instant, in UTC."""
    if not text:
        return None
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ClientError(f"{flag}: {text!r} is not a date YYYY-MM-DD or an ISO timestamp") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def cmd_usage(args: argparse.Namespace, ctx: Context) -> int:
    if args.what == "runs":
        return _runs(args, ctx)
    start = parse_bound(args.start, "--from", end=False)
    end = parse_bound(args.end, "--to", end=True)
    if start is not None and end is not None and end <= start:
        raise ClientError("--to: must not be before --from")
    reply = ctx.client().get_usage(args.account, start, end, args.period)
    if ctx.json:
        render.print_json(render.to_dict(reply))
    elif ctx.output == "csv":
        _csv(USAGE_COLUMNS, ([getattr(r, c) for c in USAGE_COLUMNS] for r in reply.rows))
    elif not reply.rows:
        ctx.err.print("no billed GPU time in this period", markup=False)
    else:
        ctx.out.print(usage_table(reply))
    return 0


def _runs(args: argparse.Namespace, ctx: Context) -> int:
    attempts = list(ctx.client().list_run_usage(args.account, args.experiment))
    if ctx.json:
        render.print_json([render.to_dict(a) for a in attempts])
    elif ctx.output == "csv":
        _csv(ATTEMPT_COLUMNS, (_attempt_cells(a) for a in attempts))
    elif not attempts:
        ctx.err.print("no billed attempts", markup=False)
    else:
        ctx.out.print(attempts_table(attempts))
    return 0


def _attempt_cells(a: usage_service_pb2.AttemptUsage) -> list[object]:
    cells: list[object] = [getattr(a, c) for c in ATTEMPT_COLUMNS]
    cells[ATTEMPT_COLUMNS.index("started_at")] = _iso(a, "started_at")
    cells[ATTEMPT_COLUMNS.index("ended_at")] = _iso(a, "ended_at")
    return cells


def _iso(message: usage_service_pb2.AttemptUsage, field: str) -> str:
    if not message.HasField(field):  # type: ignore[arg-type]
        return ""
    return str(getattr(message, field).ToDatetime(UTC).isoformat())


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    sys.stdout.flush()


def fmt_gpu_time(gpu_seconds: float) -> str:
    return f"{gpu_seconds:,.3f} s  ({gpu_seconds / 3600:,.2f} h)"


def usage_table(reply: usage_service_pb2.GetUsageResponse) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, show_footer=True)
    table.add_column("ACCOUNT", footer="total")
    table.add_column("PERIOD")
    table.add_column("GPU MODEL")
    table.add_column("ATTEMPTS", justify="right")
    table.add_column("GPU TIME", justify="right", footer=fmt_gpu_time(reply.total_gpu_seconds))
    for r in reply.rows:
        table.add_row(r.account_id, r.period, r.gpu_model or "-", str(r.attempts), fmt_gpu_time(r.gpu_seconds))
    return table


def attempts_table(attempts: Sequence[usage_service_pb2.AttemptUsage]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("RUN", "ATTEMPT", "ACCOUNT", "AGENT", "GPUS", "GPU MODEL", "STARTED", "ENDED", "GPU TIME"):
        table.add_column(name, justify="right" if name in ("ATTEMPT", "GPUS", "GPU TIME") else "left")
    for a in attempts:
        ended = render.fmt_time(a.ended_at) if a.HasField("ended_at") else "holding GPUs"
        table.add_row(
            a.run_id,
            str(a.attempt),
            a.account_id,
            a.agent_id,
            str(a.gpus),
            a.gpu_model or "-",
            render.fmt_time(a.started_at),
            ended,
            fmt_gpu_time(a.gpu_seconds),
        )
    return table
