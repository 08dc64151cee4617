"""A log written by main at 696c377 (before ExperimentCreated carried facts) replays to the same read models.

`main_696c377/` was made by `make_main_log.py` with that commit's code: its
handlers, domain and searcher wrote the events, and its projections computed
the read models beside them. Here the same events go into a fresh log with
their positions, ids and recorded times, and today's code rebuilds from them.
Every old ExperimentCreated is upcast on read, so the experiments keep their
priority, their searched state, their leaderboard objective (the legacy one's
goal defaulting to maximize) and their searchers' decisions. Without the
upcaster the priorities fall to 0, the searching experiment stops searching and
every best metric disappears.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from sqlalchemy import DateTime, select, text, update

from runyard.server.domain import events as ev
from runyard.server.domain.search_state import INPUT_TYPES, Searches
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.resources import Queries
from runyard.server.store import EventStore, NewEvent, create_store_engine, migrate
from runyard.server.store.schema import event_log
from tests.support.databases import fresh_postgres_database, sqlite_url

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent / "main_696c377"


def main_log() -> list[dict[str, Any]]:
    lines = (FIXTURE / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


def main_models() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURE / "read_models.json").read_text(encoding="utf-8"))
    return loaded


def load(store: EventStore) -> None:
    """The old log into a fresh store: same positions, streams, versions, ids and recorded times."""
    log = main_log()
    for entry in log:
        appended = store.append(
            entry["stream"],
            [
                NewEvent(
                    type=entry["type"],
                    data=base64.b64decode(entry["data"]),
                    event_id=uuid.UUID(entry["event_id"]),
                    correlation_id=entry["correlation"],
                )
            ],
        )
        assert appended.last_position == entry["position"]
    with store.engine.begin() as conn:
        for entry in log:
            conn.execute(
                update(event_log)
                .where(event_log.c.position == entry["position"])
                .values(recorded_at=_utc(datetime.fromisoformat(entry["recorded_at"])))
            )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cell(value: object, is_time: bool) -> object:
    if value is None:
        return None
    if is_time:
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return _utc(parsed).isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def tables_now(store: EventStore, columns: dict[str, list[str]]) -> dict[str, list[dict[str, object]]]:
    """Today's projection rows, in main's columns (columns and tables added since are checked by their own tests)."""
    out: dict[str, list[dict[str, object]]] = {}
    with store.engine.connect() as conn:
        for table in schema.PROJECTION_TABLES:
            if table.name not in columns:
                continue  # a table added since main (metric_batches): checked by its own tests
            times = {c.name for c in table.columns if isinstance(c.type, DateTime)}
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            out[table.name] = [{k: _cell(row[k], k in times) for k in columns[table.name]} for row in rows]
    return out


def tables_then(models: dict[str, Any]) -> tuple[dict[str, list[dict[str, object]]], dict[str, list[str]]]:
    tables: dict[str, list[dict[str, object]]] = {}
    columns: dict[str, list[str]] = {}
    for table in schema.PROJECTION_TABLES:
        if table.name not in models["tables"]:
            continue  # a table added since main's log was written (run_checkpoints, run_attempts)
        rows = models["tables"][table.name]
        times = {c.name for c in table.columns if isinstance(c.type, DateTime)}
        columns[table.name] = sorted(rows[0]) if rows else [c.name for c in table.columns]
        tables[table.name] = [{k: _cell(v, k in times) for k, v in row.items()} for row in rows]
    return tables, columns


def without_repeats(points: list[dict[str, object]]) -> list[dict[str, object]]:
    """Main's points less those a later attempt repeated (issue 11: the first value at a step stands)."""
    from runyard.server.domain.metric_repeats import RunSteps

    steps: dict[object, RunSteps] = {}
    kept = []
    for p in sorted(points, key=lambda p: (p["position"], p["idx"])):  # type: ignore[return-value]
        run = steps.setdefault(p["run_id"], RunSteps())
        if run.keep(int(p["attempt"]), str(p["name"]), int(p["step"])):  # type: ignore[call-overload]
            kept.append(p)
    return kept


def test_a_log_written_by_main_rebuilds_to_the_read_models_main_computed(store: EventStore) -> None:
    load(store)
    models = main_models()
    ProjectionRunner(store).rebuild()
    expected, columns = tables_then(models)
    expected["metric_points"] = without_repeats(expected["metric_points"])
    got = tables_now(store, columns)
    for name in expected:
        assert got[name] == expected[name], name
    # The experiments as the API answers them: state, searching, priority, runs with their scores.
    queries = Queries(store.engine)
    experiments = []
    for _position, summary in queries.list_experiments(limit=1000):
        full = queries.get_experiment(summary.id)
        assert full is not None
        experiments.append(json_format.MessageToDict(full, preserving_proto_field_name=True))
    assert experiments == models["experiments"]
    # What the fixture holds, so the comparison above is not vacuous.
    by_name = {e["name"]: e for e in experiments}
    assert by_name["asha-waiting"]["searching"] is True
    assert by_name["legacy-lenient"]["runs"][0]["best_metric"] == 0.8  # no goal in its manifest: maximize
    assert by_name["plain-single"]["runs"][0]["best_metric"] == 0.4  # minimize
    priorities = {row["name"]: row["priority"] for row in got["experiments"]}
    assert priorities["grid-plain"] == 9 and priorities["plain-single"] == 5 and priorities["legacy-lenient"] == 7


def test_searchers_rebuilt_from_an_old_log_derive_main_s_decisions(store: EventStore) -> None:
    """A restarted driver replays the log: the searchers built from upcast facts decide exactly as main's did."""
    load(store)
    inputs = {t.DESCRIPTOR.full_name for t in INPUT_TYPES}
    searches = Searches()
    derived: list[dict[str, object]] = []
    for e in store.read_all(0, 100_000):
        if e.type not in inputs:
            continue
        for n in searches.feed(e.stream_id, e.correlation_id, ev.decode(e.type, e.data), e.recorded_at):
            fields = dataclasses.asdict(n.action)
            kind = type(n.action).__name__
            derived.append({"experiment": n.experiment_id, "number": n.number, "kind": kind, **fields})
    assert derived == main_models()["decisions"]
    assert {d["kind"] for d in derived} >= {"CreateTrial", "StopRun", "Promote", "NewBest", "Complete"}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    with fresh_postgres_database() as url:
        yield url


def test_upgrading_a_database_main_left_keeps_every_leaderboard(empty_database: str) -> None:
    """Revision 0006 fills the objective of the rows already projected, as the old leaderboard read it."""
    migrate(empty_database, "0005")
    engine = create_store_engine(empty_database)
    rows = {
        "exp-legacy": "name: l\ncommand: c\nresults: s3://r\nsearch: {metric: acc}\n",
        "exp-min": "name: m\ncommand: c\nresults: s3://r\nsearch: {method: single, metric: loss, goal: minimize}\n",
        "exp-none": "name: n\ncommand: c\nresults: s3://r\n",
    }
    try:
        with engine.begin() as conn:
            for position, (exp_id, manifest_yaml) in enumerate(rows.items(), start=1):
                conn.execute(
                    text(
                        "INSERT INTO experiments (id, account_id, name, manifest_yaml, code_uri, run_count,"
                        " cancel_requested, created_at, priority, position)"
                        " VALUES (:id, 'a', :id, :m, '', 1, false, :t, 0, :p)"
                    ),
                    {"id": exp_id, "m": manifest_yaml, "t": datetime.now(UTC), "p": position},
                )
        migrate(empty_database, "head")
        t = schema.experiments.c
        with engine.connect() as conn:
            found = conn.execute(select(t.id, t.objective_metric, t.objective_maximize)).all()
        got = {r.id: (r.objective_metric, bool(r.objective_maximize)) for r in found}
    finally:
        engine.dispose()
    assert got == {"exp-legacy": ("acc", True), "exp-min": ("loss", False), "exp-none": ("", True)}
