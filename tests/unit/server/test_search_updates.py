"""WatchExperiment's view of a search: each searcher record and stop becomes the update a watcher reads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message

from runyard.client.render import search_text, status_text
from runyard.server.api.updates import UpdateBuilder, encode_cursor
from runyard.server.domain import events as ev
from runyard.server.store import RecordedEvent
from runyard.v1 import common_pb2, events_pb2, watch_pb2

SK = watch_pb2.SearchUpdate.Kind
RS = common_pb2.RunState
AT = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)
EXP = "exp-1"
RUN = "run-abc"


def recorded(stream_id: str, msg: Message, position: int = 42) -> RecordedEvent:
    type_, data = ev.encode(msg)
    return RecordedEvent(position, stream_id, 3, uuid.uuid4(), type_, data, EXP, AT)


def build(stream_id: str, msg: Message, builder: UpdateBuilder | None = None) -> watch_pb2.RunUpdate:
    update = (builder or UpdateBuilder()).build(recorded(stream_id, msg))
    assert update is not None
    assert update.cursor == encode_cursor(42)
    assert update.time.ToDatetime(tzinfo=UTC) == AT
    return update


def search_of(update: watch_pb2.RunUpdate) -> watch_pb2.SearchUpdate:
    assert update.WhichOneof("body") == "search"
    return update.search


def test_a_trial_started_names_its_run_and_hyperparameters() -> None:
    added = events_pb2.ExperimentRunAdded(run_id=RUN, index=3, hyperparameters={"lr": "0.001", "width": "64"})
    update = build(ev.experiment_stream(EXP), added)
    assert update.run_id == RUN
    search = search_of(update)
    assert search.kind == SK.KIND_TRIAL_STARTED
    assert dict(search.hyperparameters) == {"lr": "0.001", "width": "64"}
    assert search_text(search).plain == "trial started lr=0.001 width=64"


def test_a_promotion_carries_its_rung_level_and_value() -> None:
    update = build(ev.experiment_stream(EXP), events_pb2.RunPromoted(run_id=RUN, rung=2, level=9, value=0.875))
    assert update.run_id == RUN
    search = search_of(update)
    assert (search.kind, search.rung, search.level, search.value) == (SK.KIND_PROMOTED, 2, 9, 0.875)
    assert search_text(search).plain.startswith("promoted at rung 2 (9): ")


def test_a_new_best_carries_its_step_and_value() -> None:
    update = build(ev.experiment_stream(EXP), events_pb2.ExperimentBestFound(run_id=RUN, step=12, value=0.93))
    assert update.run_id == RUN
    search = search_of(update)
    assert (search.kind, search.step, search.value) == (SK.KIND_NEW_BEST, 12, 0.93)
    assert search_text(search).plain.endswith(" at step 12")


@pytest.mark.parametrize(
    ("msg", "kind", "shown"),
    [
        (
            events_pb2.ExperimentBudgetSpent(reason="GPU-hour budget of 2 spent"),
            SK.KIND_BUDGET_SPENT,
            "budget spent: GPU-hour budget of 2 spent",
        ),
        (
            events_pb2.ExperimentCompleted(reason="every trial ended"),
            SK.KIND_COMPLETED,
            "search completed: every trial ended",
        ),
    ],
)
def test_the_experiment_wide_records_name_no_run(msg: Message, kind: int, shown: str) -> None:
    update = build(ev.experiment_stream(EXP), msg)
    assert update.run_id == ""
    search = search_of(update)
    assert (search.kind, search.reason) == (kind, getattr(msg, "reason"))  # noqa: B009
    assert search_text(search).plain == shown


def test_a_stop_request_is_the_searchers_stop_decision() -> None:
    stop = events_pb2.RunStopRequested(reason="asha", rung=1, level=3, value=0.41)
    update = build(ev.run_stream(RUN), stop)
    assert update.run_id == RUN
    search = search_of(update)
    assert (search.kind, search.rung, search.level, search.value, search.reason) == (
        SK.KIND_STOPPED,
        1,
        3,
        0.41,
        "asha",
    )
    assert search_text(search).plain == "stopped at rung 1 (3): 0.41 missed the cut"


def test_a_budget_stop_says_why() -> None:
    search = search_of(build(ev.run_stream(RUN), events_pb2.RunStopRequested(reason="budget")))
    assert (search.kind, search.reason) == (SK.KIND_STOPPED, "budget")
    assert search_text(search).plain == "stopped early: budget"


def test_stopped_early_is_a_final_status() -> None:
    update = build(ev.run_stream(RUN), events_pb2.RunStoppedEarly(attempt=2, reason="asha"))
    assert update.run_id == RUN
    assert update.WhichOneof("body") == "status"
    status = update.status
    assert (status.state, status.attempt, status.final, status.message) == (RS.RUN_STATE_STOPPED_EARLY, 2, True, "asha")
    assert status_text(status).plain.startswith("STOPPED_EARLY")


def test_stopped_early_from_the_queue_is_final_too() -> None:
    status = build(ev.run_stream(RUN), events_pb2.RunStoppedEarly(attempt=0, reason="budget")).status
    assert (status.state, status.attempt, status.final) == (RS.RUN_STATE_STOPPED_EARLY, 0, True)


def test_a_stop_request_leaves_the_run_state_a_later_cancel_request_shows() -> None:
    builder = UpdateBuilder()
    build(ev.run_stream(RUN), events_pb2.RunStarted(attempt=1), builder)
    build(ev.run_stream(RUN), events_pb2.RunStopRequested(reason="asha"), builder)
    cancel = build(ev.run_stream(RUN), events_pb2.RunCancelRequested(reason="user"), builder)
    assert (cancel.status.state, cancel.status.cancel_requested) == (RS.RUN_STATE_RUNNING, True)


@pytest.mark.parametrize(
    "msg",
    [
        events_pb2.ExperimentCreated(experiment_id=EXP),
        events_pb2.ExperimentCancelRequested(reason="x"),
        events_pb2.ExperimentPrioritySet(priority=2),
    ],
    ids=lambda m: type(m).__name__,
)
def test_other_experiment_events_are_no_search_update(msg: Message) -> None:
    assert UpdateBuilder().build(recorded(ev.experiment_stream(EXP), msg)) is None
