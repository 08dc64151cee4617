"""Small builders for API tests."""

from __future__ import annotations

import json
import textwrap
import time

import grpc

from runyard.v1 import common_pb2, experiment_service_pb2, run_service_pb2, watch_pb2
from tests.support.stack import Stubs

RS = common_pb2.RunState


def manifest(command: str, name: str = "api-test", extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        name: {name}
        framework: {{name: python}}
        command: {json.dumps(command)}
        results: s3://results/{name}
        """
    ) + textwrap.dedent(extra)


def create(stubs: Stubs, manifest_yaml: str, request_id: str = "") -> experiment_service_pb2.CreateExperimentResponse:
    return stubs.experiments.CreateExperiment(
        experiment_service_pb2.CreateExperimentRequest(manifest_yaml=manifest_yaml, client_request_id=request_id),
        timeout=30,
    )


def watch_all(
    stubs: Stubs, run_id: str, cursor: str = "", timeout: float = 60, queue: bool = False
) -> list[watch_pb2.RunUpdate]:
    """Every update of the run to its end; queue-status updates (no event of their own) only with `queue`."""
    stream = stubs.runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run_id, cursor=cursor), timeout=timeout)
    return [m.update for m in stream if queue or not m.update.HasField("queue")]


def wait_state(stubs: Stubs, run_id: str, states: set[int], timeout: float = 60) -> run_service_pb2.GetRunResponse:
    deadline = time.monotonic() + timeout
    while True:
        reply = stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=10)
        if reply.run.state in states:
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} stayed {RS.Name(reply.run.state)}; wanted {states}")
        time.sleep(0.05)


def code_of(err: grpc.RpcError) -> grpc.StatusCode:
    return err.code()  # type: ignore[no-any-return, attr-defined]


def details(err: grpc.RpcError) -> str:
    return str(err.details())  # type: ignore[attr-defined]
