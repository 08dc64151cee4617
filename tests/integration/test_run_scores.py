"""The leaderboard fields the server puts on each Run, on PostgreSQL and SQLite.

Rows go straight into the projection tables (as the projector would write them),
then `run_scores.annotate` fills best_metric and best_step from the experiment's
own search metric and goal.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert

from runyard.server.domain.upcasting import legacy_facts
from runyard.server.projections import schema
from runyard.server.queries import run_scores
from runyard.server.store import EventStore
from runyard.v1 import resources_pb2

pytestmark = pytest.mark.integration


def manifest(search: str) -> str:
    return f"name: x\ncommand: python t.py\nresults: s3://r/x\nsearch: {search}\n"


def add_experiment(store: EventStore, exp_id: str, manifest_yaml: str, position: int) -> None:
    """The experiment's row with the objective the projector records from its ExperimentCreated's facts."""
    facts = legacy_facts(manifest_yaml)
    with store.engine.begin() as conn:
        conn.execute(
            insert(schema.experiments).values(
                id=exp_id, account_id="default", name=exp_id, manifest_yaml=manifest_yaml, code_uri="",
                run_count=1, cancel_requested=False, created_at=datetime.now(UTC), priority=0, position=position,
                objective_metric=facts.objective_metric, objective_maximize=facts.objective_maximize,
            )
        )  # fmt: skip


def add_points(store: EventStore, run_id: str, name: str, values: list[float], position: int) -> None:
    """One report of `values` at steps 0, 1, 2, ..."""
    with store.engine.begin() as conn:
        conn.execute(
            insert(schema.metric_points),
            [
                dict(position=position, idx=i, run_id=run_id, attempt=1, name=name, step=i, value=v, time_us=i,
                     source="stdout")
                for i, v in enumerate(values)
            ],
        )  # fmt: skip


def annotated(store: EventStore, *runs: tuple[str, str]) -> dict[str, tuple[float, int] | None]:
    protos = [resources_pb2.Run(id=run_id, experiment_id=exp_id) for run_id, exp_id in runs]
    with store.engine.connect() as conn:
        run_scores.annotate(conn, protos)
    return {r.id: (r.best_metric, r.best_step) if r.HasField("best_metric") else None for r in protos}


def test_best_follows_each_experiments_metric_and_goal(store: EventStore) -> None:
    add_experiment(store, "exp-max", manifest("{method: single, metric: acc, goal: maximize}"), 1)
    add_experiment(store, "exp-min", manifest("{method: single, metric: loss, goal: minimize}"), 2)
    add_experiment(store, "exp-none", manifest("{method: single}"), 3)
    # The peak 0.9 is reached at step 2 and again at step 4: the first time counts.
    add_points(store, "run-1", "acc", [0.5, 0.8, 0.9, 0.7, 0.9], 10)
    add_points(store, "run-1", "loss", [3.0, 0.1, 2.0], 11)  # another metric of the same run: ignored
    add_points(store, "run-2", "loss", [1.0, 0.0, 0.5], 12)  # zero is a real best
    add_points(store, "run-3", "acc", [0.99], 13)  # its experiment names no metric
    add_points(store, "run-2", "acc", [1.0], 14)  # not its experiment's metric
    got = annotated(store, ("run-1", "exp-max"), ("run-2", "exp-min"), ("run-3", "exp-none"), ("run-4", "exp-max"))
    assert got == {"run-1": (0.9, 2), "run-2": (0.0, 1), "run-3": None, "run-4": None}


def test_a_later_report_with_a_better_value_moves_the_best(store: EventStore) -> None:
    add_experiment(store, "exp-1", manifest("{method: single, metric: acc, goal: maximize}"), 1)
    add_points(store, "run-1", "acc", [0.5, 0.6], 10)
    assert annotated(store, ("run-1", "exp-1")) == {"run-1": (0.6, 1)}
    with store.engine.begin() as conn:
        conn.execute(
            insert(schema.metric_points).values(
                position=11, idx=0, run_id="run-1", attempt=1, name="acc", step=7, value=0.75, time_us=9, source="x"
            )
        )
    assert annotated(store, ("run-1", "exp-1")) == {"run-1": (0.75, 7)}


def test_objective_is_read_leniently() -> None:
    assert run_scores.objective_of(manifest("{metric: val_loss, goal: MINIMIZE}")) == run_scores.Objective(
        "val_loss", maximize=False
    )
    assert run_scores.objective_of(manifest("{metric: acc}")) == run_scores.Objective("acc", maximize=True)
    assert run_scores.objective_of("search: [not, a, mapping]") is None
    assert run_scores.objective_of(": : bad yaml") is None
