"""An in-process stand-in for the Runyard API, for unit tests of the SDK and CLI.

It serves canned resources and records what the client sent, so a test can check the
client's side of the contract (chunking, request ids, cursors, pagination, output)
without the control plane. Tests of the real server live in tests/integration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from runyard.server.queries import downsample
from runyard.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    common_pb2,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    resources_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    watch_pb2,
)

RS = common_pb2.RunState


@dataclass
class State:
    """What the fake serves and what it saw."""

    experiments: dict[str, resources_pb2.Experiment] = field(default_factory=dict)
    runs: dict[str, resources_pb2.Run] = field(default_factory=dict)
    updates: list[watch_pb2.RunUpdate] = field(default_factory=list)
    points: list[common_pb2.MetricPoint] = field(default_factory=list)
    log_lines: list[common_pb2.LogLine] = field(default_factory=list)
    max_code_bytes: int = 100 * 1024 * 1024
    page_size: int = 2
    # Calls to fail with UNAVAILABLE before answering, per method name.
    fail_first: dict[str, int] = field(default_factory=dict)
    # Watches block after yielding this many updates until `release` is set.
    pause_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    # Recorded requests.
    upload_chunks: list[experiment_service_pb2.UploadCodeRequest] = field(default_factory=list)
    create_requests: list[experiment_service_pb2.CreateExperimentRequest] = field(default_factory=list)
    metrics_requests: list[run_service_pb2.GetRunMetricsRequest] = field(default_factory=list)
    watch_cursors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def should_fail(self, method: str) -> bool:
        with self.lock:
            left = self.fail_first.get(method, 0)
            if left > 0:
                self.fail_first[method] = left - 1
                return True
            return False


def _unavailable(context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAVAILABLE, "the read model lags; retry")


def _page(items: list[object], token: str, size: int) -> tuple[list[object], str]:
    start = int(token) if token else 0
    chunk = items[start : start + size]
    next_token = str(start + size) if start + size < len(items) else ""
    return chunk, next_token


class Experiments(experiment_service_pb2_grpc.ExperimentServiceServicer):
    def __init__(self, state: State) -> None:
        self.s = state

    def UploadCode(
        self,
        request_iterator: Iterator[experiment_service_pb2.UploadCodeRequest],
        context: grpc.ServicerContext,
    ) -> experiment_service_pb2.UploadCodeResponse:
        chunks = list(request_iterator)
        self.s.upload_chunks = chunks
        size = sum(len(c.chunk) for c in chunks)
        return experiment_service_pb2.UploadCodeResponse(
            code_uri="s3://runyard/code/abc.tar.gz", sha256="abc", size_bytes=size
        )

    def CreateExperiment(
        self, request: experiment_service_pb2.CreateExperimentRequest, context: grpc.ServicerContext
    ) -> experiment_service_pb2.CreateExperimentResponse:
        self.s.create_requests.append(request)
        if self.s.should_fail("CreateExperiment"):
            _unavailable(context)
        experiment = next(iter(self.s.experiments.values()))
        return experiment_service_pb2.CreateExperimentResponse(experiment=experiment)

    def GetExperiment(
        self, request: experiment_service_pb2.GetExperimentRequest, context: grpc.ServicerContext
    ) -> experiment_service_pb2.GetExperimentResponse:
        experiment = self.s.experiments.get(request.experiment_id)
        if experiment is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"experiment {request.experiment_id} not found")
        return experiment_service_pb2.GetExperimentResponse(experiment=experiment)

    def ListExperiments(
        self, request: experiment_service_pb2.ListExperimentsRequest, context: grpc.ServicerContext
    ) -> experiment_service_pb2.ListExperimentsResponse:
        items, token = _page(list(self.s.experiments.values()), request.page_token, self.s.page_size)
        return experiment_service_pb2.ListExperimentsResponse(
            experiments=items,  # type: ignore[arg-type]
            next_page_token=token,
        )

    def CancelExperiment(
        self, request: experiment_service_pb2.CancelExperimentRequest, context: grpc.ServicerContext
    ) -> experiment_service_pb2.CancelExperimentResponse:
        return experiment_service_pb2.CancelExperimentResponse(experiment=self.s.experiments[request.experiment_id])

    def PauseExperiment(
        self, request: experiment_service_pb2.PauseExperimentRequest, context: grpc.ServicerContext
    ) -> experiment_service_pb2.PauseExperimentResponse:
        experiment = self.s.experiments.get(request.experiment_id)
        if experiment is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"experiment {request.experiment_id} not found")
        experiment.state = resources_pb2.EXPERIMENT_STATE_PAUSED
        return experiment_service_pb2.PauseExperimentResponse(experiment=experiment)

    def ResumeExperiment(
        self, request: experiment_service_pb2.ResumeExperimentRequest, context: grpc.ServicerContext
    ) -> experiment_service_pb2.ResumeExperimentResponse:
        experiment = self.s.experiments.get(request.experiment_id)
        if experiment is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"experiment {request.experiment_id} not found")
        experiment.state = resources_pb2.EXPERIMENT_STATE_ACTIVE
        return experiment_service_pb2.ResumeExperimentResponse(experiment=experiment)

    def WatchExperiment(
        self, request: experiment_service_pb2.WatchExperimentRequest, context: grpc.ServicerContext
    ) -> Iterator[experiment_service_pb2.WatchExperimentResponse]:
        for update in _updates_after(self.s, request.cursor, context):
            yield experiment_service_pb2.WatchExperimentResponse(update=update)


def _updates_after(state: State, cursor: str, context: grpc.ServicerContext) -> Iterator[watch_pb2.RunUpdate]:
    state.watch_cursors.append(cursor)
    sent = 0
    for update in state.updates:
        if cursor and int(update.cursor[1:]) <= int(cursor[1:]):
            continue
        if state.pause_after is not None and sent == state.pause_after:
            while not state.release.wait(0.05):
                if not context.is_active():
                    return
        yield update
        sent += 1


class Runs(run_service_pb2_grpc.RunServiceServicer):
    def __init__(self, state: State) -> None:
        self.s = state

    def GetRun(
        self, request: run_service_pb2.GetRunRequest, context: grpc.ServicerContext
    ) -> run_service_pb2.GetRunResponse:
        if self.s.should_fail("GetRun"):
            _unavailable(context)
        run = self.s.runs.get(request.run_id)
        if run is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id} not found")
        return run_service_pb2.GetRunResponse(run=run)

    def ListRuns(
        self, request: run_service_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> run_service_pb2.ListRunsResponse:
        runs = [
            r
            for r in self.s.runs.values()
            if (not request.experiment_id or r.experiment_id == request.experiment_id)
            and (not request.states or r.state in request.states)
        ]
        items, token = _page(list(runs), request.page_token, self.s.page_size)
        return run_service_pb2.ListRunsResponse(runs=items, next_page_token=token)  # type: ignore[arg-type]

    def CancelRun(
        self, request: run_service_pb2.CancelRunRequest, context: grpc.ServicerContext
    ) -> run_service_pb2.CancelRunResponse:
        run = self.s.runs[request.run_id]
        if run.state in (RS.RUN_STATE_COMPLETED, RS.RUN_STATE_FAILED, RS.RUN_STATE_CANCELED):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"run {run.id} is {RS.Name(run.state)} and cannot be canceled"
            )
        return run_service_pb2.CancelRunResponse(run=run)

    def WatchRun(
        self, request: run_service_pb2.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[run_service_pb2.WatchRunResponse]:
        for update in _updates_after(self.s, request.cursor, context):
            yield run_service_pb2.WatchRunResponse(update=update)

    def GetRunLogs(
        self, request: run_service_pb2.GetRunLogsRequest, context: grpc.ServicerContext
    ) -> run_service_pb2.GetRunLogsResponse:
        items, token = _page(list(self.s.log_lines), request.page_token, self.s.page_size)
        return run_service_pb2.GetRunLogsResponse(lines=items, next_page_token=token)  # type: ignore[arg-type]

    def GetRunMetrics(
        self, request: run_service_pb2.GetRunMetricsRequest, context: grpc.ServicerContext
    ) -> run_service_pb2.GetRunMetricsResponse:
        """Downsamples with the server's own rule, so the CLI sees what a real server would send."""
        self.s.metrics_requests.append(request)
        points = [p for p in self.s.points if not request.names or p.name in request.names]
        counts: dict[str, int] = {}
        kept: list[int] = []
        for name in dict.fromkeys(p.name for p in points):
            indices = [i for i, p in enumerate(points) if p.name == name]
            counts[name] = len(indices)
            steps, values = [points[i].step for i in indices], [points[i].value for i in indices]
            kept.extend(indices[j] for j in downsample.keep(steps, values, request.max_points))
        return run_service_pb2.GetRunMetricsResponse(points=[points[i] for i in sorted(kept)], point_counts=counts)


class Admin(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, state: State) -> None:
        self.s = state

    def RebuildProjections(
        self, request: admin_service_pb2.RebuildProjectionsRequest, context: grpc.ServicerContext
    ) -> admin_service_pb2.RebuildProjectionsResponse:
        return admin_service_pb2.RebuildProjectionsResponse(events_replayed=42, seconds=0.5)

    def ListAgents(
        self, request: admin_service_pb2.ListAgentsRequest, context: grpc.ServicerContext
    ) -> admin_service_pb2.ListAgentsResponse:
        return admin_service_pb2.ListAgentsResponse(
            agents=[resources_pb2.Agent(id="agent-1", hostname="h", slots=2, alive=True)]
        )

    def GetServerInfo(
        self, request: admin_service_pb2.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> admin_service_pb2.GetServerInfoResponse:
        return admin_service_pb2.GetServerInfoResponse(
            version="test", code_uri_prefix="s3://runyard/code", max_code_bytes=self.s.max_code_bytes
        )

    def WhoAmI(
        self, request: admin_service_pb2.WhoAmIRequest, context: grpc.ServicerContext
    ) -> admin_service_pb2.WhoAmIResponse:
        """Echoes the bearer secret it was sent as the key id, so tests see what the client sends."""
        sent = [v for k, v in context.invocation_metadata() if k == "authorization"]
        return admin_service_pb2.WhoAmIResponse(
            account_id="default", role=common_pb2.ROLE_ADMIN, key_id=",".join(map(str, sent))
        )


class FakeServer:
    """Serves `state` on a loopback port; `restart()` keeps the port, like a restarted replica."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
        experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server(Experiments(self.state), server)
        run_service_pb2_grpc.add_RunServiceServicer_to_server(Runs(self.state), server)
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
            Admin(self.state),  # type: ignore[abstract]  # the account RPCs are tested on a real server
            server,
        )
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()
