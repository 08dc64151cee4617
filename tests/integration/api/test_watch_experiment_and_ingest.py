"""WatchExperiment, and how the ingest treats duplicate and stale agent reports."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from runyard import bus
from runyard.v1 import agent_pb2, common_pb2, events_pb2, experiment_service_pb2, run_service_pb2
from tests.integration.api.helpers import RS, create, manifest, wait_state
from tests.support.services import NatsServer, wait_until
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

GRID = "hyperparameters:\n  n: {type: categorical, values: [1, 2]}\nsearch: {method: grid}\n"


def test_watch_experiment_streams_every_run_to_its_end(stubs: Stubs) -> None:
    exp = create(stubs, manifest('python -c "print(${n})"', extra=GRID)).experiment
    stream = stubs.experiments.WatchExperiment(
        experiment_service_pb2.WatchExperimentRequest(experiment_id=exp.id), timeout=60
    )
    updates = [m.update for m in stream]
    finals = {u.run_id for u in updates if u.HasField("status") and u.status.final}
    assert finals == {r.id for r in exp.runs}
    printed = {ln.text for u in updates if u.HasField("logs") for ln in u.logs.lines}
    assert {"1", "2"} <= printed
    # Resuming from the middle yields exactly the rest.
    middle = len(updates) // 2
    rest = stubs.experiments.WatchExperiment(
        experiment_service_pb2.WatchExperimentRequest(experiment_id=exp.id, cursor=updates[middle].cursor),
        timeout=60,
    )
    assert [m.update.cursor for m in rest] == [u.cursor for u in updates[middle + 1 :]]


async def _publish(url: str, agent_key: str, *reports: agent_pb2.AgentReport) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    headers = {"Authorization": f"Bearer {agent_key}"}
    for report in reports:
        await js.publish(bus.reports_subject(report.agent_id), report.SerializeToString(), headers=headers)
    await nc.close()


def _log_report(run_id: str, attempt: int, text: str, event_id: str) -> agent_pb2.AgentReport:
    line = common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text=text)
    return agent_pb2.AgentReport(
        event_id=event_id,
        agent_id="agent-1",
        run_id=run_id,
        logged=events_pb2.RunLogged(run_id=run_id, attempt=attempt, lines=[line]),
    )


def test_a_redelivered_report_is_stored_once_and_a_stale_attempt_is_refused(
    stubs: Stubs, stack: Stack, nats_server: NatsServer
) -> None:
    run_id = create(stubs, manifest('python -c "import time; time.sleep(60)"')).experiment.runs[0].id
    running = wait_state(stubs, run_id, {RS.RUN_STATE_RUNNING}).run
    assert running.attempt == 1
    duplicate = _log_report(run_id, 1, "delivered twice", str(uuid.uuid4()))
    stale = _log_report(run_id, 2, "from an attempt that is not current", str(uuid.uuid4()))
    marker = _log_report(run_id, 1, "marker", str(uuid.uuid4()))
    asyncio.run(_publish(nats_server.url, stack.agent_key, duplicate, duplicate, stale, marker))

    def stored() -> list[str] | None:
        lines = stubs.runs.GetRunLogs(run_service_pb2.GetRunLogsRequest(run_id=run_id), timeout=10).lines
        texts = [ln.text for ln in lines]
        return texts if "marker" in texts else None

    texts = wait_until(stored, 30, "the marker report was never stored")
    assert texts.count("delivered twice") == 1
    assert "from an attempt that is not current" not in texts
    stubs.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=run_id), timeout=10)
    wait_state(stubs, run_id, {RS.RUN_STATE_CANCELED})
