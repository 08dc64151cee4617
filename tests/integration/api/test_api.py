"""The gRPC API against a live server on a loopback port (PostgreSQL, NATS, an agent)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runyard.v1 import (
    admin_service_pb2,
    experiment_service_pb2,
    run_service_pb2,
)
from tests.integration.api.helpers import RS, code_of, create, details, manifest, wait_state, watch_all
from tests.support.services import wait_until
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration


def test_a_run_goes_from_queued_to_completed_and_its_history_ends(stubs: Stubs) -> None:
    exp = create(stubs, manifest("python -c \"print('hello from run')\"")).experiment
    assert exp.id.startswith("exp-") and exp.run_count == 1
    run_id = exp.runs[0].id
    updates = watch_all(stubs, run_id)
    states = [u.status.state for u in updates if u.HasField("status")]
    assert states == [
        RS.RUN_STATE_QUEUED,
        RS.RUN_STATE_ASSIGNED,
        RS.RUN_STATE_STAGING,
        RS.RUN_STATE_RUNNING,
        RS.RUN_STATE_UPLOADING,
        RS.RUN_STATE_COMPLETED,
    ]
    assert updates[-1].status.final
    cursors = [int(u.cursor[1:]) for u in updates]
    assert cursors == sorted(set(cursors)), "cursors must strictly increase"
    lines = [line.text for u in updates if u.HasField("logs") for line in u.logs.lines]
    assert "hello from run" in lines
    # Stored logs are readable after the run.
    logs = stubs.runs.GetRunLogs(run_service_pb2.GetRunLogsRequest(run_id=run_id), timeout=10)
    assert "hello from run" in [line.text for line in logs.lines]
    # A watcher of a finished run gets the same history and the end.
    again = watch_all(stubs, run_id)
    assert [u.cursor for u in again] == [u.cursor for u in updates]

    # The watch reads the log; the experiment's counts come from a read model a moment behind it.
    def counts() -> dict[str, int] | None:
        got = stubs.experiments.GetExperiment(experiment_service_pb2.GetExperimentRequest(experiment_id=exp.id))
        by_state = dict(got.experiment.runs_by_state)
        return by_state if by_state == {"RUN_STATE_COMPLETED": 1} else None

    wait_until(counts, 10, "the experiment's read model never showed its run completed")


def test_a_retried_create_with_the_same_request_id_creates_once(stubs: Stubs) -> None:
    request_id = str(uuid.uuid4())
    body = manifest(
        "true", extra="hyperparameters:\n  x: {type: categorical, values: [1, 2, 3]}\nsearch: {method: grid}\n"
    )
    first = create(stubs, body, request_id).experiment
    second = create(stubs, body, request_id).experiment
    assert first.id == second.id
    assert [r.id for r in first.runs] == [r.id for r in second.runs]
    runs = stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=first.id), timeout=10).runs
    assert len(runs) == 3
    other = create(stubs, body, str(uuid.uuid4())).experiment
    assert other.id != first.id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (manifest("true").replace("name: api-test", "name: ''"), "name"),
        (manifest("echo ${nope}"), "command"),
        (manifest("true", extra="resources: {gpus: -1}\n"), "resources.gpus"),
        (manifest("true").replace("results: s3://results/api-test", "results: ftp://x/y"), "results"),
        (manifest("true", extra="hyperparameters:\n  lr: {type: log, min: 0, max: 1}\n"), "hyperparameters.lr"),
        (manifest("true", extra="colour: blue\n"), "colour"),
    ],
)
def test_an_invalid_manifest_is_refused_naming_the_field(stubs: Stubs, body: str, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        create(stubs, body)
    assert code_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details(err.value)


def test_unknown_ids_are_not_found_and_name_the_id(stubs: Stubs) -> None:
    calls: list[Callable[[], object]] = [
        lambda: stubs.experiments.GetExperiment(experiment_service_pb2.GetExperimentRequest(experiment_id="exp-nope")),
        lambda: stubs.experiments.CancelExperiment(
            experiment_service_pb2.CancelExperimentRequest(experiment_id="exp-nope")
        ),
        lambda: stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id="run-nope")),
        lambda: stubs.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id="run-nope")),
        lambda: list(stubs.runs.WatchRun(run_service_pb2.WatchRunRequest(run_id="run-nope"))),
        lambda: stubs.runs.GetRunLogs(run_service_pb2.GetRunLogsRequest(run_id="run-nope")),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert code_of(err.value) == grpc.StatusCode.NOT_FOUND
        assert "nope" in details(err.value)


def test_cancel_of_a_finished_run_is_a_failed_precondition_naming_the_state(stubs: Stubs) -> None:
    run_id = create(stubs, manifest("true")).experiment.runs[0].id
    wait_state(stubs, run_id, {RS.RUN_STATE_COMPLETED})
    with pytest.raises(grpc.RpcError) as err:
        stubs.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=run_id))
    assert code_of(err.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETED" in details(err.value)


def test_cancel_stops_a_running_run(stubs: Stubs) -> None:
    run_id = (
        create(stubs, manifest("python -c \"import time; print('started', flush=True); time.sleep(120)\""))
        .experiment.runs[0]
        .id
    )
    wait_state(stubs, run_id, {RS.RUN_STATE_RUNNING})
    reply = stubs.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=run_id), timeout=10)
    assert reply.run.cancel_requested
    final = wait_state(stubs, run_id, {RS.RUN_STATE_CANCELED}, timeout=30)
    assert final.run.HasField("ended_at")


def test_a_failing_command_fails_the_run_with_its_exit_status(stubs: Stubs) -> None:
    run_id = create(stubs, manifest('python -c "import sys; sys.exit(3)"')).experiment.runs[0].id
    final = wait_state(stubs, run_id, {RS.RUN_STATE_FAILED}).run
    assert final.exit_code == 3
    assert final.failure_reason == 1  # FAILURE_REASON_USER_CODE


def test_lists_paginate_without_gaps_or_repeats(stubs: Stubs) -> None:
    made = {create(stubs, manifest("true", name=f"page-{i}")).experiment.id for i in range(5)}
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = stubs.experiments.ListExperiments(
            experiment_service_pb2.ListExperimentsRequest(page_size=2, page_token=token), timeout=10
        )
        seen += [e.id for e in reply.experiments]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert set(seen) == made and len(seen) == len(made)
    assert pages >= 3
    with pytest.raises(grpc.RpcError) as err:
        stubs.experiments.ListExperiments(experiment_service_pb2.ListExperimentsRequest(page_token="garbage"))
    assert code_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_are_served(stack: Stack, stubs: Stubs) -> None:
    with stack.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {
        "runyard.v1.ExperimentService",
        "runyard.v1.RunService",
        "runyard.v1.AdminService",
        "grpc.health.v1.Health",
    } <= names


def test_code_over_the_size_limit_is_refused_naming_the_limit(stack: Stack) -> None:
    stack.start_server(max_code_bytes="1000")
    with stack.channel() as channel:
        stubs = Stubs(channel)
        chunks = iter([experiment_service_pb2.UploadCodeRequest(chunk=b"x" * 2000)])
        with pytest.raises(grpc.RpcError) as err:
            stubs.experiments.UploadCode(chunks, timeout=10)
    assert code_of(err.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1000" in details(err.value)


def test_rebuild_replays_into_identical_read_models(stubs: Stubs) -> None:
    exp = create(
        stubs,
        manifest(
            "python -c \"print('x')\"",
            extra="hyperparameters:\n  a: {type: categorical, values: [1, 2]}\nsearch: {method: grid}\n",
        ),
    ).experiment
    for run in exp.runs:
        wait_state(stubs, run.id, {RS.RUN_STATE_COMPLETED})
    before = stubs.experiments.GetExperiment(
        experiment_service_pb2.GetExperimentRequest(experiment_id=exp.id)
    ).experiment
    reply = stubs.admin.RebuildProjections(admin_service_pb2.RebuildProjectionsRequest(), timeout=60)
    assert reply.events_replayed > 0
    after = stubs.experiments.GetExperiment(
        experiment_service_pb2.GetExperimentRequest(experiment_id=exp.id)
    ).experiment
    assert after == before
