"""The usage projection against a bill computed independently from the raw events.

A synthetic log of completed, failed, canceled (queued and running) and
retried runs of two accounts, with times chosen to cross midnight and a month
end, is projected in small batches as it grows (as a live server would), then
rebuilt from position 0: both tables must equal each other, and every figure
must equal what the test computes itself from `read_all`, to the microsecond.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message
from sqlalchemy import select, update

from runyard.server.domain import billing
from runyard.server.domain import events as ev
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.usage import UsageQueries
from runyard.server.store import EventStore, NewEvent
from runyard.server.store.schema import event_log
from runyard.v1 import common_pb2, events_pb2
from tests.integration.billing.ledger import attempts_from_log, bill_by_day, total

pytestmark = pytest.mark.integration

FR = common_pb2.FailureReason


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Log:
    """Appends run events with the recorded time the test chooses (and projects as it goes)."""

    def __init__(self, store: EventStore, runner: ProjectionRunner) -> None:
        self.store = store
        self.runner = runner
        self.appended = 0

    def run(self, run_id: str, when: str, *messages: Message) -> None:
        with self.store.transaction() as tx:
            for msg in messages:
                type_, data = ev.encode(msg)
                result = tx.append(ev.run_stream(run_id), [NewEvent(type=type_, data=data, event_id=uuid.uuid4())])
                # The store stamps the wall clock; the test moves the stamp to its own timeline.
                tx.connection.execute(
                    update(event_log).where(event_log.c.position == result.last_position).values(recorded_at=at(when))
                )
        self.appended += len(messages)
        if self.appended % 4 == 0:
            self.runner.catch_up()

    def create(self, run_id: str, account: str, gpus: int, when: str) -> None:
        spec = common_pb2.RunSpec(command="python train.py", resources=common_pb2.Resources(gpus=gpus))
        self.run(
            run_id,
            when,
            events_pb2.RunCreated(run_id=run_id, experiment_id=f"exp-{account}", account_id=account, spec=spec),
        )


def write_history(log: Log) -> None:
    """Ten runs over 2026-03-31 .. 2026-04-02, interleaved the way a busy cluster writes them."""
    a, g = "acme", "globex"
    log.create("run-done", a, 2, "2026-03-31 22:00:00")
    log.create("run-fail", a, 1, "2026-03-31 22:00:00.000001")
    log.create("run-qcancel", g, 1, "2026-03-31 22:00:01")
    log.create("run-rcancel", g, 4, "2026-03-31 22:00:02")
    log.create("run-retry", a, 1, "2026-03-31 22:00:03")
    log.create("run-retry2", g, 2, "2026-03-31 22:00:04")
    log.create("run-cpu", a, 0, "2026-03-31 22:00:05")
    log.create("run-open", g, 1, "2026-03-31 22:00:06")
    log.create("run-nogpuids", a, 3, "2026-03-31 22:00:07")

    # Completed, across midnight and the month end: billed until its results are stored.
    log.run(
        "run-done",
        "2026-03-31 23:00:00.123456",
        events_pb2.RunAssigned(attempt=1, agent_id="n1", gpu_ids=["0", "1"], gpu_model="H100"),
    )
    log.run(
        "run-fail",
        "2026-03-31 23:10:00",
        events_pb2.RunAssigned(attempt=1, agent_id="n2", gpu_ids=["0"], gpu_model="A100"),
    )
    log.run("run-done", "2026-03-31 23:01:00", events_pb2.RunStaging(attempt=1))
    log.run("run-qcancel", "2026-03-31 23:20:00", events_pb2.RunCanceled(attempt=0, reason="changed my mind"))
    log.run("run-done", "2026-03-31 23:02:00", events_pb2.RunStarted(attempt=1))
    log.run(
        "run-rcancel",
        "2026-03-31 23:30:00.5",
        events_pb2.RunAssigned(attempt=1, agent_id="n3", gpu_ids=["0", "1", "2", "3"], gpu_model="H100"),
    )
    log.run("run-fail", "2026-03-31 23:40:00", events_pb2.RunStaging(attempt=1), events_pb2.RunStarted(attempt=1))
    log.run("run-rcancel", "2026-03-31 23:31:00", events_pb2.RunStaging(attempt=1), events_pb2.RunStarted(attempt=1))
    # Failed by user code after midnight: billed to the failure.
    log.run(
        "run-fail",
        "2026-04-01 00:05:00.000007",
        events_pb2.RunFailed(attempt=1, reason=FR.FAILURE_REASON_USER_CODE, exit_code=3),
    )
    # Retried: the first attempt ends when its agent is declared lost and the run is re-queued.
    log.run(
        "run-retry",
        "2026-04-01 01:00:00",
        events_pb2.RunAssigned(attempt=1, agent_id="n2", gpu_ids=["1"], gpu_model="A100"),
    )
    log.run("run-retry", "2026-04-01 01:00:01", events_pb2.RunStaging(attempt=1), events_pb2.RunStarted(attempt=1))
    log.run(
        "run-retry", "2026-04-01 01:30:00.25", events_pb2.RunRequeued(attempt=1, reason=FR.FAILURE_REASON_AGENT_LOST)
    )
    log.run("run-done", "2026-04-01 01:45:00", events_pb2.RunUploading(attempt=1))
    log.run("run-done", "2026-04-01 01:50:00.654321", events_pb2.RunCompleted(attempt=1, results_uri="s3://r/done"))
    # Canceled while running: billed until it actually stopped, not until the cancel was asked.
    log.run("run-rcancel", "2026-04-01 02:00:00", events_pb2.RunCancelRequested(reason="user"))
    log.run("run-rcancel", "2026-04-01 02:00:09.999999", events_pb2.RunCanceled(attempt=1, reason="user"))
    # Nothing is billed while re-queued; the second attempt is billed on its own.
    log.run(
        "run-retry",
        "2026-04-01 03:00:00",
        events_pb2.RunAssigned(attempt=2, agent_id="n1", gpu_ids=["0"], gpu_model="H100"),
    )
    log.run("run-retry", "2026-04-01 03:00:02", events_pb2.RunStaging(attempt=2), events_pb2.RunStarted(attempt=2))
    log.run("run-retry", "2026-04-01 23:59:59.999999", events_pb2.RunUploading(attempt=2))
    log.run("run-retry", "2026-04-02 00:00:00.000001", events_pb2.RunCompleted(attempt=2))
    # Retried after an internal error, then failed for good on the second attempt.
    log.run(
        "run-retry2",
        "2026-04-01 04:00:00",
        events_pb2.RunAssigned(attempt=1, agent_id="n3", gpu_ids=["4", "5"], gpu_model="H100"),
    )
    log.run("run-retry2", "2026-04-01 04:00:30", events_pb2.RunRequeued(attempt=1, reason=FR.FAILURE_REASON_INTERNAL))
    log.run(
        "run-retry2",
        "2026-04-01 05:00:00",
        events_pb2.RunAssigned(attempt=2, agent_id="n3", gpu_ids=["4", "5"], gpu_model="H100"),
    )
    log.run("run-retry2", "2026-04-01 05:10:00", events_pb2.RunFailed(attempt=2, reason=FR.FAILURE_REASON_INTERNAL))
    # CPU-only: holds a slot but no GPU, so it costs nothing.
    log.run("run-cpu", "2026-04-01 06:00:00", events_pb2.RunAssigned(attempt=1, agent_id="n1"))
    log.run("run-cpu", "2026-04-01 07:00:00", events_pb2.RunFailed(attempt=1, reason=FR.FAILURE_REASON_USER_CODE))
    # An assignment that names no GPU ids is billed for the GPUs the run asked for.
    log.run("run-nogpuids", "2026-04-01 08:00:00", events_pb2.RunAssigned(attempt=1, agent_id="n1"))
    log.run("run-nogpuids", "2026-04-01 08:00:00.5", events_pb2.RunCanceled(attempt=1, reason="user"))
    # Still running: no end yet.
    log.run(
        "run-open",
        "2026-04-02 10:00:00",
        events_pb2.RunAssigned(attempt=1, agent_id="n2", gpu_ids=["0"], gpu_model="A100"),
    )
    log.runner.catch_up()


def usage_table(store: EventStore) -> list[tuple[object, ...]]:
    t = schema.attempt_usage
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t).order_by(t.c.run_id, t.c.attempt))]


def test_usage_equals_the_bill_from_raw_events_and_a_rebuild_reproduces_it(store: EventStore) -> None:
    write_history(Log(store, ProjectionRunner(store, batch_size=3)))
    expected = attempts_from_log(store)
    queries = UsageQueries(store.read_engine)

    # Per attempt: the interval and GPUs the log says, and nothing for a run canceled in the queue.
    projected = {(a.run_id, a.attempt): a for a in queries.attempts(None)}
    assert set(projected) == set(expected)
    assert ("run-qcancel", 1) not in projected and len(projected) == 10
    for key, held in expected.items():
        got = projected[key]
        assert (got.account_id, got.gpus, got.gpu_model, got.started_at, got.ended_at) == (
            held.account_id,
            held.gpus,
            held.gpu_model,
            held.start,
            held.end,
        ), key
    assert projected[("run-nogpuids", 1)].gpus == 3
    assert projected[("run-open", 1)].ended_at is None

    # Per account and day, up to an instant after every event.
    until = at("2026-04-02 12:00:00.000001")
    lines, grand = billing.summarize(queries.attempts(None, None, until), "day", until, None, until)
    by_day: dict[tuple[str, str], int] = {}
    for line in lines:
        by_day[(line.account_id, line.period)] = by_day.get((line.account_id, line.period), 0) + line.gpu_micros
    independent: dict[tuple[str, str], int] = {}
    for (account, day, _model), us in bill_by_day(expected, until).items():
        independent[(account, day)] = independent.get((account, day), 0) + us
    assert by_day == independent
    assert grand == total(expected, until)
    # Hand-checked figures for a few of them.
    assert by_day[("acme", "2026-03-31")] == (2 * (3600 * 10**6 - 123_456)) + 50 * 60 * 10**6
    assert by_day[("globex", "2026-04-02")] == 2 * 3600 * 10**6 + 1  # run-open, still running

    # A user asking for one day sees that day only, in months too.
    acme_day = billing.summarize(
        queries.attempts("acme", at("2026-04-01 00:00:00"), at("2026-04-02 00:00:00")),
        "month",
        until,
        at("2026-04-01 00:00:00"),
        at("2026-04-02 00:00:00"),
    )
    models = [(x.period, x.gpu_model) for x in acme_day[0]]
    assert models == [("2026-04", ""), ("2026-04", "A100"), ("2026-04", "H100")]
    assert acme_day[1] == independent[("acme", "2026-04-01")]

    # Closed rows carry their GPU-seconds; a rebuild from position 0 reproduces every row exactly.
    live = usage_table(store)
    t = schema.attempt_usage
    with store.engine.connect() as conn:
        for r in conn.execute(select(t).where(t.c.ended_at.is_not(None))):
            assert r.gpu_seconds == billing.seconds(billing.gpu_micros(r.started_at, r.ended_at, r.gpus))
    for batch_size in (2000, 1):
        ProjectionRunner(store, batch_size=batch_size).rebuild()
        assert usage_table(store) == live


def test_usage_follows_a_run_whose_events_straddle_batches(store: EventStore) -> None:
    """RunCreated, RunAssigned and RunCompleted each in a batch of their own."""
    runner = ProjectionRunner(store, batch_size=1)
    log = Log(store, runner)
    log.create("run-x", "acme", 2, "2026-06-01 00:00:00")
    runner.catch_up()
    log.run("run-x", "2026-06-01 00:00:01", events_pb2.RunAssigned(attempt=1, agent_id="n1", gpu_ids=["0", "1"]))
    runner.catch_up()
    assert UsageQueries(store.read_engine).attempts("acme")[0].ended_at is None
    log.run("run-x", "2026-06-01 00:00:02", events_pb2.RunStaging(attempt=1), events_pb2.RunStarted(attempt=1))
    log.run("run-x", "2026-06-01 00:00:03", events_pb2.RunUploading(attempt=1))
    log.run("run-x", "2026-06-01 00:01:01.000001", events_pb2.RunCompleted(attempt=1))
    runner.catch_up()
    (attempt,) = UsageQueries(store.read_engine).attempts("acme")
    assert attempt.ended_at == at("2026-06-01 00:01:01.000001")
    (row,) = usage_table(store)
    assert row[-1] == 120.000002  # gpu_seconds: 2 GPUs x 60.000001 s
    assert UsageQueries(store.read_engine).attempts("other") == []
