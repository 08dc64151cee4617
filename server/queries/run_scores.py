"""What a leaderboard needs on each run: its best search-metric value and its GPU time.

The best value is computed here, on the server, from the metrics projection,
so every client (CLI, SDK, a generated gRPC client) ranks runs the same way and
none has to fetch whole metric histories to do it. Which metric counts, and in
which direction, is the experiment's own choice (manifest ``search.metric`` and
``search.goal``), recorded at submit on ExperimentCreated and kept on the
experiments read model, so runs are only ever scored against their
experiment's objective and no manifest is parsed to rank them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, func, select

from runyard.server.domain.experiment_facts import objective as objective_in
from runyard.server.domain.upcasting import legacy_facts
from runyard.server.projections import schema
from runyard.server.queries.usage import run_gpu_seconds
from runyard.v1 import resources_pb2


@dataclass(frozen=True)
class Objective:
    """The metric a search optimizes and whether bigger is better."""

    metric: str
    maximize: bool


def objective_of(manifest_yaml: str) -> Objective | None:
    """The objective an experiment logged before facts were recorded is ranked by (see `upcasting`).

    Read leniently on purpose: the manifest was validated when the experiment was
    created, and a parser that has since grown stricter must not make an old
    experiment's leaderboard disappear.
    """
    found = objective_in(legacy_facts(manifest_yaml))
    return None if found is None else Objective(*found)


def best_points(conn: Connection, run_ids: Sequence[str], objective: Objective) -> dict[str, tuple[float, int]]:
    """Run id -> (best value, first step reaching it) over the runs' points of the objective's metric.

    Two aggregate queries rather than a window over every point: the first finds
    each run's best value, the second only the points that equal it.
    """
    if not run_ids:
        return {}
    t = schema.metric_points
    pick = func.max if objective.maximize else func.min
    of_metric = and_(t.c.run_id.in_(list(run_ids)), t.c.name == objective.metric)
    best = select(t.c.run_id, pick(t.c.value).label("best")).where(of_metric).group_by(t.c.run_id).subquery()
    rows = conn.execute(
        select(t.c.run_id, best.c.best, func.min(t.c.step))
        .join(best, and_(t.c.run_id == best.c.run_id, t.c.value == best.c.best))
        .where(t.c.name == objective.metric)
        .group_by(t.c.run_id, best.c.best)
    )
    return {run_id: (float(value), int(step)) for run_id, value, step in rows}


def objectives(conn: Connection, experiment_ids: Iterable[str]) -> dict[str, Objective]:
    """Experiment id -> its search objective, for those that name one."""
    ids = sorted(set(experiment_ids))
    if not ids:
        return {}
    t = schema.experiments
    rows = conn.execute(select(t.c.id, t.c.objective_metric, t.c.objective_maximize).where(t.c.id.in_(ids)))
    return {exp_id: Objective(metric, bool(maximize)) for exp_id, metric, maximize in rows if metric}


def annotate(
    conn: Connection, runs: Sequence[resources_pb2.Run], now: datetime | None = None, with_best: bool = True
) -> None:
    """Fill gpu_seconds of `runs` in place, and best_metric and best_step unless `with_best` is False.

    Internal readers of one run (the scheduler sending a cancel, a watch checking
    whether a run ended) pass False: they need no scan of its metric points.
    """
    if not runs:
        return
    billed = run_gpu_seconds(conn, [r.id for r in runs], now or datetime.now(UTC))
    by_experiment: dict[str, list[resources_pb2.Run]] = {}
    for run in runs:
        run.gpu_seconds = billed.get(run.id, 0.0)
        by_experiment.setdefault(run.experiment_id, []).append(run)
    if not with_best:
        return
    for exp_id, objective in objectives(conn, by_experiment).items():
        members = by_experiment[exp_id]
        best = best_points(conn, [r.id for r in members], objective)
        for run in members:
            if run.id in best:
                run.best_metric, run.best_step = best[run.id]
