"""A searcher that raises ends its own experiment, once, and no other (issue 9: a manifest the parser let
through made the search driver fail on every pass, forever, stalling every searched experiment)."""

from __future__ import annotations

from typing import NoReturn

import pytest

from runyard.server.domain import events as ev
from runyard.server.domain.search_state import Searches
from runyard.server.domain.searchers import Complete, CreateTrial
from runyard.v1 import common_pb2, events_pb2
from tests.unit.domain.test_search_state import T0, Entry, asha_yaml, created_entry


def metrics(experiment_id: str, run_id: str) -> Entry:
    points = [common_pb2.MetricPoint(name="val_accuracy", step=2, value=0.5)]
    msg = events_pb2.RunMetricsReported(run_id=run_id, attempt=1, points=points)
    return Entry(ev.run_metrics_stream(run_id), experiment_id, msg, T0)


def feed(searches: Searches, entry: Entry) -> list[object]:
    return [n.action for n in searches.feed(entry.stream_id, entry.correlation_id, entry.msg, entry.recorded_at)]


def test_a_raising_searcher_completes_its_experiment_and_the_others_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    searches = Searches()
    broken, _ = created_entry("exp-broken", asha_yaml())
    healthy, _ = created_entry("exp-healthy", asha_yaml(seed=3))
    started = {e.correlation_id: feed(searches, e) for e in (broken, healthy)}
    first = {k: next(a for a in v if isinstance(a, CreateTrial)) for k, v in started.items()}

    def boom(*_: object) -> NoReturn:
        raise OverflowError("int too large to convert to float")

    search = searches.get("exp-broken")
    assert search is not None and search.searcher is not None
    monkeypatch.setattr(search.searcher, "on_metric", boom)

    decided = feed(searches, metrics("exp-broken", first["exp-broken"].run_id))
    assert decided == [Complete(reason="the searcher failed: int too large to convert to float")]
    assert feed(searches, metrics("exp-broken", first["exp-broken"].run_id)) == []
    assert "exp-broken" not in searches.live_ids()
    # The other experiment is fed and decides as before.
    feed(searches, metrics("exp-healthy", first["exp-healthy"].run_id))
    assert "exp-healthy" in searches.live_ids()
