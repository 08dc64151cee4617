"""Projection tables: the read models queries use.

Only projectors write these tables, and they are rebuilt from the log by
`runyard admin rebuild`. The DDL lives in the Alembic revision 0002; these
Table objects describe the same columns for SQLAlchemy Core statements.
"""

from __future__ import annotations

import json

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy import (
    false as sql_false,
)
from sqlalchemy import (
    true as sql_true,
)

metadata = MetaData()

checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

experiments = Table(
    "experiments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("manifest_yaml", Text, nullable=False),
    Column("code_uri", Text, nullable=False),
    Column("run_count", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    # True while the experiment's searcher may still add runs (searched experiments).
    Column("searching", Boolean, nullable=False, server_default=sql_false()),
    Column("end_reason", Text, nullable=False, server_default=""),
    # The metric its runs are ranked by ("" for none) and its direction, as decided at submit (revision 0006).
    Column("objective_metric", Text, nullable=False, server_default=""),
    Column("objective_maximize", Boolean, nullable=False, server_default=sql_true()),
    # Paused (ExperimentPaused) and not resumed since (revision pause).
    Column("paused", Boolean, nullable=False, server_default=sql_false()),
    # Log position of ExperimentCreated: a stable, unique order for pagination.
    Column("position", BigInteger, nullable=False, unique=True),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("experiment_id", String(64), nullable=False, index=True),
    Column("account_id", String(64), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("state", Integer, nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("gpu_ids", Text, nullable=False),  # JSON list
    Column("command", Text, nullable=False),
    Column("hyperparameters", Text, nullable=False),  # JSON object
    Column("results_uri", Text, nullable=False),
    Column("spec", LargeBinary, nullable=False),  # RunSpec, for dispatch
    Column("failure_reason", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("exit_code", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("latest_metrics", Text, nullable=False),  # JSON object name -> value
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("gpus", Integer, nullable=False, server_default="0"),  # GPUs the run asks for
    Column("gpu_model", String(64), nullable=False, server_default=""),  # model of the GPUs it holds
    # Position of the event that (re)queued the run: FIFO order of the queue.
    Column("queued_position", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False, unique=True),
    # Preemption (revision 0010): the spec's `preemptible: false`, the log position of the current
    # attempt's RunAssigned (youngest first), whether the current attempt is being preempted, and by
    # which run for which rule (the latest preemption, kept for `show`).
    Column("not_preemptible", Boolean, nullable=False, server_default=sql_false()),
    Column("assigned_position", BigInteger, nullable=False, server_default="0"),
    Column("preempt_requested", Boolean, nullable=False, server_default=sql_false()),
    Column("preempted_by", String(64), nullable=False, server_default=""),
    Column("preempt_rule", String(32), nullable=False, server_default=""),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("slots", Integer, nullable=False),
    Column("gpu_ids", Text, nullable=False),  # JSON list
    Column("labels", Text, nullable=False),  # JSON object
    Column("frameworks", Text, nullable=False),  # JSON list of [name, version, digest] (older rows: [name, version])
    Column("lost", Boolean, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("gpus", Text, nullable=False, server_default="[]"),  # JSON list of GpuDevice dicts
    Column("draining", Boolean, nullable=False, server_default=sql_false()),
    # "process" or "container": how the agent runs commands (an older agent's registration: process).
    Column("runtime", String(32), nullable=False, server_default="process"),
)

metric_points = Table(
    "metric_points",
    metadata,
    # Log position of the RunMetricsReported event and the point's index in it:
    # a key that a rebuild reproduces exactly.
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("run_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("source", String(32), nullable=False),
)

# A RunMetricsReported event's stored points as one serialized GetRunMetricsResponse (its `points` only), beside
# their metric_points rows, written in the same transaction: a whole history is the concatenation of a run's
# batches in position order (protobuf appends repeated fields of concatenated messages), parsed once in C instead
# of 10,000 rows decoded and added one by one in Python (bench/metric_history.py). `counts` is the batch's points
# per metric name (JSON), so one statement gives the points and their counts.
metric_batches = Table(
    "metric_batches",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("run_id", String(64), nullable=False),
    Column("points", LargeBinary, nullable=False),
    Column("counts", Text, nullable=False),
)

# A run's complete checkpoints (RunCheckpointed), one row each; the newest by position is its latest.
run_checkpoints = Table(
    "run_checkpoints",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("run_id", String(64), nullable=False, index=True),
    Column("checkpoint_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("checkpoint", LargeBinary, nullable=False),  # the Checkpoint message, as reported
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

# Each attempt of a run (RunAssigned): where it ran and the checkpoint it resumed from.
run_attempts = Table(
    "run_attempts",
    metadata,
    Column("id", String(80), primary_key=True),  # "<run id>/<attempt>"
    Column("run_id", String(64), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("resumed_from", LargeBinary, nullable=False),  # Checkpoint, b"" when it started afresh
    Column("assigned_at", DateTime(timezone=True), nullable=False),
    Column("ended", Text, nullable=False, server_default=""),  # how it ended; "" while it runs
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("gpu_quota", Integer, nullable=False),
    Column("max_queued_runs", Integer, nullable=False),
    Column("run_quota", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # False: the scheduler never preempts the account's runs (AccountPreemptionSet; revision 0010).
    Column("preemptible", Boolean, nullable=False, server_default=sql_true()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("role", Integer, nullable=False),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("revoked", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row per attempt that held slots: the billed interval (usage projection).
attempt_usage = Table(
    "attempt_usage",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    Column("account_id", String(64), nullable=False, index=True),
    Column("experiment_id", String(64), nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("gpu_model", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("gpu_seconds", Float, nullable=False),
)


def agent_frameworks(column: str) -> list[tuple[str, str, str]]:
    """The agents.frameworks column as (name, version, digest); a row from before digests has digest ""."""
    return [(str(f[0]), str(f[1]) if len(f) > 1 else "", str(f[2]) if len(f) > 2 else "") for f in json.loads(column)]


PROJECTION_TABLES = (experiments, runs, agents, metric_points, metric_batches, run_checkpoints, run_attempts)
