"""One NUL byte must not stop the control plane (issue 9): a live PostgreSQL stack with a real agent process.

Before the fix, each of these froze every read model for good: the event was
appended, every projection batch then failed on it (PostgreSQL text cannot
hold NUL), every later CreateExperiment answered UNAVAILABLE "read model
lags", `admin rebuild` failed, and a restarted server exited in catch-up.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from runyard import bus
from runyard.server.domain.events import encode, experiment_stream, run_stream
from runyard.server.store import EventStore, NewEvent
from runyard.storable import REPLACEMENT
from runyard.v1 import admin_service_pb2, agent_pb2, common_pb2, events_pb2, run_service_pb2
from tests.integration.api.helpers import RS, create, manifest, wait_state
from tests.support.services import NatsServer, wait_until
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

ENDED: set[int] = {RS.RUN_STATE_COMPLETED, RS.RUN_STATE_FAILED, RS.RUN_STATE_CANCELED}


def _later_submits_work(stubs: Stubs, name: str) -> None:
    """A new experiment is answered (not UNAVAILABLE) and its run completes."""
    run = create(stubs, manifest("python -c \"print('fine')\"", name=name)).experiment.runs[0]
    assert wait_state(stubs, run.id, ENDED).run.state == RS.RUN_STATE_COMPLETED


def _no_read_model_failed(stubs: Stubs) -> None:
    info = stubs.admin.GetServerInfo(admin_service_pb2.GetServerInfoRequest(), timeout=10)
    assert list(info.read_model_failures) == []


def test_a_forged_manifest_whose_command_holds_nul_does_not_freeze_the_read_models(stack: Stack, stubs: Stubs) -> None:
    # Appended straight to the log, as a forged or buggy writer could: no API validation on the way.
    command = "echo forged \x00 tail"
    manifest_yaml = manifest(command, name="forged")
    experiment_id, run_id = "exp-forged-nul", "run-forged-nul"
    created = events_pb2.ExperimentCreated(
        experiment_id=experiment_id,
        account_id="default",
        name="forged\x00",
        manifest_yaml=manifest_yaml,
        run_ids=[run_id],
    )
    spec = common_pb2.RunSpec(command=command, results_uri="s3://results/forged\x00")
    run = events_pb2.RunCreated(run_id=run_id, experiment_id=experiment_id, account_id="default", spec=spec)
    store = EventStore.open(stack.database_url, migrate=False)
    try:
        for stream, message in ((experiment_stream(experiment_id), created), (run_stream(run_id), run)):
            type_name, data = encode(message)
            store.append(stream, [NewEvent(type=type_name, data=data, event_id=uuid.uuid4())])
    finally:
        store.close()

    _later_submits_work(stubs, "after-forged")
    shown = stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=10).run
    assert shown.command == command.replace("\x00", REPLACEMENT)
    _no_read_model_failed(stubs)

    reply = stubs.admin.RebuildProjections(admin_service_pb2.RebuildProjectionsRequest(), timeout=120)
    assert reply.events_replayed > 0
    _no_read_model_failed(stubs)

    # A restarted server starts (its catch-up does not exit) and takes submits.
    stack.servers[0].stop()
    stack.start_server()
    _later_submits_work(stubs, "after-restart")


def test_a_run_that_prints_nul_on_stderr_ends_failed_with_readable_logs(stubs: Stubs) -> None:
    command = r"""python -c 'import sys; sys.stderr.buffer.write(b"boom\x00x\n"); sys.stderr.flush(); sys.exit(3)'"""
    run_id = create(stubs, manifest(command, name="nul-stderr")).experiment.runs[0].id

    run = wait_state(stubs, run_id, ENDED).run
    assert run.state == RS.RUN_STATE_FAILED
    assert "boom\ufffdx" in run.message and "\x00" not in run.message
    logs = stubs.runs.GetRunLogs(run_service_pb2.GetRunLogsRequest(run_id=run_id), timeout=10)
    assert "boom\ufffdx" in [line.text for line in logs.lines]
    _later_submits_work(stubs, "after-nul-stderr")
    _no_read_model_failed(stubs)


def test_a_metric_name_with_an_escaped_nul_from_the_jsonl_helper_is_stored(stubs: Stubs) -> None:
    # What runyard.log (or any script) may write: JSON spells NUL and a lone surrogate as escapes.
    # json.dumps writes them as \u0000 and \ud800, as a script with such names would.
    command = (
        r"""python -c 'import os, json; open(os.environ["RUNYARD_METRICS_FILE"], "a").write("""
        r"""json.dumps({"step": 1, "lo\x00ss": 0.5, "acc\ud800": 0.75}) + chr(10))'"""
    )
    run_id = create(stubs, manifest(command, name="nul-metric")).experiment.runs[0].id

    run = wait_state(stubs, run_id, ENDED).run
    assert run.state == RS.RUN_STATE_COMPLETED, run.message
    metrics = stubs.runs.GetRunMetrics(run_service_pb2.GetRunMetricsRequest(run_id=run_id), timeout=10)
    assert {(p.name, p.value) for p in metrics.points} == {("lo\ufffdss", 0.5), ("acc\ufffd", 0.75)}
    assert dict(run.latest_metrics) == {"lo\ufffdss": 0.5, "acc\ufffd": 0.75}
    _later_submits_work(stubs, "after-nul-metric")
    _no_read_model_failed(stubs)


async def _publish(url: str, agent_key: str, *reports: agent_pb2.AgentReport) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for report in reports:
        headers = {"Authorization": f"Bearer {agent_key}"}
        await js.publish(bus.reports_subject(report.agent_id), report.SerializeToString(), headers=headers)
    await nc.close()


async def _reports_in_hand(url: str) -> int:
    """Reports the ingest has not acked yet (waiting, or taken and not acked: a nak'ed one stays here)."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(bus.REPORTS_STREAM, bus.INGEST_DURABLE)
        return int(info.num_pending + info.num_ack_pending)
    finally:
        await nc.close()


def test_a_forged_report_with_nul_is_refused_or_made_storable_and_holds_nothing_up(
    stubs: Stubs, stack: Stack, nats_server: NatsServer
) -> None:
    rid = create(stubs, manifest('python -c "import time; time.sleep(60)"', name="forged-report")).experiment.runs[0].id
    wait_state(stubs, rid, {RS.RUN_STATE_RUNNING})
    # A run id with NUL (no stream can be named so), and a metric name with NUL on the real run.
    bad_id = agent_pb2.AgentReport(
        event_id=str(uuid.uuid4()),
        agent_id="agent-1",
        run_id="run-\x00",
        logged=events_pb2.RunLogged(run_id="run-\x00", attempt=1, lines=[common_pb2.LogLine(text="x")]),
    )
    point = common_pb2.MetricPoint(name="lo\x00ss", step=1, value=0.5, source="jsonl")
    nul_name = agent_pb2.AgentReport(
        event_id=str(uuid.uuid4()),
        agent_id="agent-1",
        run_id=rid,
        metrics=events_pb2.RunMetricsReported(run_id=rid, attempt=1, points=[point]),
    )
    line = common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text="marker")
    marker = agent_pb2.AgentReport(
        event_id=str(uuid.uuid4()),
        agent_id="agent-1",
        run_id=rid,
        logged=events_pb2.RunLogged(run_id=rid, attempt=1, lines=[line]),
    )
    asyncio.run(_publish(nats_server.url, stack.agent_key, bad_id, nul_name, marker))

    def metric_names() -> list[str] | None:
        points = stubs.runs.GetRunMetrics(run_service_pb2.GetRunMetricsRequest(run_id=rid), timeout=10).points
        return [p.name for p in points] or None

    assert wait_until(metric_names, 30, "the metrics report was never projected") == ["lo\ufffdss"]
    wait_until(
        lambda: (
            "marker" in [ln.text for ln in stubs.runs.GetRunLogs(run_service_pb2.GetRunLogsRequest(run_id=rid)).lines]
        ),
        30,
        "the marker report was never stored",
    )
    # Every report was acked: the unstorable one refused, not redelivered forever.
    wait_until(lambda: asyncio.run(_reports_in_hand(nats_server.url)) == 0, 15, "a report is still redelivered")
    _no_read_model_failed(stubs)
    stubs.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=rid), timeout=10)
