"""The Python SDK: typed calls over the generated `runyard.v1` gRPC stubs.

    from runyard.client import Client

    with Client("127.0.0.1:50051") as client:
        experiment = client.submit("examples/digits-pytorch/manifest.yaml")
        for update in client.watch_experiment(experiment.id):
            ...

Retries. Reads, cancels and creates (which carry a client request id, so a retry
never creates twice) are retried while the server answers UNAVAILABLE, for up to
`retry_s` seconds with backoff: a server restart or a read model that lags a
moment is invisible to the caller. Watches reconnect the same way (for up to
`watch_retry_s` seconds of outage) and resume from the cursor of the last update
they yielded, so nothing is lost or repeated.

Every failure is a `ClientError` (`ApiError` for a gRPC status, `ServerUnreachable`
when nothing answers at the endpoint) whose message is one line for a person.

API key. Every call carries ``authorization: Bearer <api_key>``. Without an
`api_key` argument the client takes the one the CLI would: RUNYARD_API_KEY, the
config file's ``api_key``, or the admin key of a `runyard up` stack at that
endpoint, so a script next to `runyard up` needs no setup either.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from runyard.client.auth import with_api_key
from runyard.client.errors import ApiError, ClientError, ServerUnreachable
from runyard.client.packing import pack_code
from runyard.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    common_pb2,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    resources_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
    watch_pb2,
)

__all__ = ["CHUNK_BYTES", "Client", "Progress"]

CHUNK_BYTES = 1024 * 1024
# Called with the number of bytes sent since the previous call.
Progress = Callable[[int], None]

T = TypeVar("T")

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# gRPC details that mean "no connection", as opposed to a server that chose to say UNAVAILABLE.
_NO_CONNECTION_HINTS = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "dns resolution failed",
    "name resolution",
    "no address",
)


class Client:
    """One channel to one Runyard endpoint; safe to share between threads."""

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        connect_timeout_s: float = 3.0,
        retry_s: float = 30.0,
        watch_retry_s: float = 120.0,
        call_timeout_s: float = 60.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self.watch_retry_s = watch_retry_s
        self.call_timeout_s = call_timeout_s
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024), *options]
        if credentials is None:
            self._channel = grpc.insecure_channel(endpoint, options=opts)
        else:
            self._channel = grpc.secure_channel(endpoint, credentials, options=opts)
        # Stubs call through the key-adding channel; connectivity is watched on the raw one.
        calls = with_api_key(self._channel, default_api_key(endpoint) if api_key is None else api_key)
        self._experiments = experiment_service_pb2_grpc.ExperimentServiceStub(calls)
        self._runs = run_service_pb2_grpc.RunServiceStub(calls)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(calls)
        self._usage = usage_service_pb2_grpc.UsageServiceStub(calls)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Connect now, or raise ServerUnreachable (default wait: connect_timeout_s).

        Calling this first turns "nothing is listening" into one quick, clear error instead
        of a call that retries for `retry_s`. A refused connection is final at once; only a
        host that does not answer at all uses up the whole wait.
        """
        timeout = self.connect_timeout_s if timeout_s is None else timeout_s
        settled = threading.Event()
        outcome: list[grpc.ChannelConnectivity] = []

        def on_change(state: grpc.ChannelConnectivity) -> None:
            if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
                outcome.append(state)
                settled.set()

        self._channel.subscribe(on_change, try_to_connect=True)
        try:
            settled.wait(timeout)
        finally:
            self._channel.unsubscribe(on_change)
        if not outcome or outcome[0] != grpc.ChannelConnectivity.READY:
            raise ServerUnreachable(self.endpoint)

    # -- code and experiments -------------------------------------------------------------

    def server_info(self) -> admin_service_pb2.GetServerInfoResponse:
        return self._unary(self._admin.GetServerInfo, admin_service_pb2.GetServerInfoRequest())

    def upload_code(
        self, path_to_tar_gz: str | os.PathLike[str], progress: Progress | None = None
    ) -> experiment_service_pb2.UploadCodeResponse:
        """Stream a packed code directory to the server in 1 MiB chunks; returns its code URI."""
        path = Path(path_to_tar_gz)
        total = path.stat().st_size
        reported = 0

        def report(n: int) -> None:
            nonlocal reported
            reported += n
            if progress is not None and n:
                progress(n)

        def chunks() -> Iterator[experiment_service_pb2.UploadCodeRequest]:
            with path.open("rb") as f:
                data = f.read(CHUNK_BYTES)
                yield experiment_service_pb2.UploadCodeRequest(chunk=data, total_bytes=total)
                report(len(data))
                while data := f.read(CHUNK_BYTES):
                    yield experiment_service_pb2.UploadCodeRequest(chunk=data)
                    report(len(data))

        def attempt() -> experiment_service_pb2.UploadCodeResponse:
            # A retry sends the whole package again: wind the caller's progress back first.
            report(-reported)
            # Slow links get time in proportion to the size (at least 1 MB/s).
            timeout = max(self.call_timeout_s, total / 1e6)
            return self._experiments.UploadCode(chunks(), timeout=timeout)

        return self._retrying(attempt)

    def pack_and_upload(
        self,
        code_dir: str | os.PathLike[str],
        progress_factory: Callable[[int], Progress | None] | None = None,
    ) -> experiment_service_pb2.UploadCodeResponse:
        """Pack `code_dir` within the server's size limit and upload it.

        `progress_factory(total_bytes)` is called once the package exists and may return a
        progress callback (the CLI opens a progress bar there).
        """
        limit = int(self.server_info().max_code_bytes)
        packed = pack_code(code_dir, limit)
        try:
            size = packed.stat().st_size
            progress = progress_factory(size) if progress_factory is not None else None
            return self.upload_code(packed, progress)
        finally:
            packed.unlink(missing_ok=True)

    def create_experiment(
        self, manifest_yaml: str, code_uri: str = "", client_request_id: str | None = None, from_run: str = ""
    ) -> resources_pb2.Experiment:
        """Create an experiment; every retry of this call reuses one client request id.

        `from_run`: fork, every run starts from that run's latest checkpoint (overrides the manifest's from_run).
        """
        request = experiment_service_pb2.CreateExperimentRequest(
            manifest_yaml=manifest_yaml,
            code_uri=code_uri,
            client_request_id=client_request_id or str(uuid.uuid4()),
            from_run=from_run,
        )
        return self._unary(self._experiments.CreateExperiment, request).experiment

    def submit(
        self,
        manifest_path: str | os.PathLike[str],
        code_dir: str | os.PathLike[str] | None = None,
        *,
        client_request_id: str | None = None,
        progress_factory: Callable[[int], Progress | None] | None = None,
    ) -> resources_pb2.Experiment:
        """Pack and upload the code (default: the manifest's folder), then create the experiment."""
        manifest = Path(manifest_path)
        try:
            text = manifest.read_text(encoding="utf-8")
        except OSError as e:
            raise ClientError(f"cannot read manifest {manifest}: {e.strerror}") from None
        folder = Path(code_dir) if code_dir is not None else manifest.resolve().parent
        uploaded = self.pack_and_upload(folder, progress_factory)
        return self.create_experiment(text, uploaded.code_uri, client_request_id)

    def get_experiment(self, experiment_id: str) -> resources_pb2.Experiment:
        request = experiment_service_pb2.GetExperimentRequest(experiment_id=experiment_id)
        return self._unary(self._experiments.GetExperiment, request).experiment

    def list_experiments(self, page_size: int = 100) -> Iterator[resources_pb2.Experiment]:
        """Every experiment, newest first, fetching pages as the iteration goes."""
        token = ""
        while True:
            request = experiment_service_pb2.ListExperimentsRequest(page_size=page_size, page_token=token)
            reply = self._unary(self._experiments.ListExperiments, request)
            yield from reply.experiments
            token = reply.next_page_token
            if not token:
                return

    def cancel_experiment(self, experiment_id: str) -> resources_pb2.Experiment:
        request = experiment_service_pb2.CancelExperimentRequest(experiment_id=experiment_id)
        return self._unary(self._experiments.CancelExperiment, request).experiment

    def pause_experiment(self, experiment_id: str, reason: str = "") -> resources_pb2.Experiment:
        """Hold every unfinished run: queued ones at once, running ones after a graceful stop with a checkpoint."""
        request = experiment_service_pb2.PauseExperimentRequest(experiment_id=experiment_id, reason=reason)
        return self._unary(self._experiments.PauseExperiment, request).experiment

    def resume_experiment(self, experiment_id: str, reason: str = "") -> resources_pb2.Experiment:
        """Queue the experiment's paused runs again; each resumes from its latest checkpoint."""
        request = experiment_service_pb2.ResumeExperimentRequest(experiment_id=experiment_id, reason=reason)
        return self._unary(self._experiments.ResumeExperiment, request).experiment

    def watch_experiment(
        self, experiment_id: str, cursor: str | None = None, on_retry: Callable[[str], None] | None = None
    ) -> Iterator[watch_pb2.RunUpdate]:
        """History then live updates of every run of the experiment, until all have ended."""

        def open_stream(at: str) -> Iterable[experiment_service_pb2.WatchExperimentResponse]:
            request = experiment_service_pb2.WatchExperimentRequest(experiment_id=experiment_id, cursor=at)
            return self._experiments.WatchExperiment(request)

        return self._watch(open_stream, cursor or "", on_retry)

    # -- runs -------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> resources_pb2.Run:
        return self._unary(self._runs.GetRun, run_service_pb2.GetRunRequest(run_id=run_id)).run

    def get_run_reply(self, run_id: str) -> run_service_pb2.GetRunResponse:
        """The run with its checkpoints and attempts (what `runyard show RUN` prints)."""
        return self._unary(self._runs.GetRun, run_service_pb2.GetRunRequest(run_id=run_id))  # type: ignore[no-any-return]

    def list_runs(
        self,
        experiment_id: str | None = None,
        states: Iterable[common_pb2.RunState.ValueType] | None = None,
        page_size: int = 100,
    ) -> Iterator[resources_pb2.Run]:
        """Runs, optionally of one experiment and in some states, fetching pages as needed."""
        token = ""
        while True:
            request = run_service_pb2.ListRunsRequest(
                experiment_id=experiment_id or "",
                states=list(states or []),
                page_size=page_size,
                page_token=token,
            )
            reply = self._unary(self._runs.ListRuns, request)
            yield from reply.runs
            token = reply.next_page_token
            if not token:
                return

    def cancel_run(self, run_id: str) -> resources_pb2.Run:
        return self._unary(self._runs.CancelRun, run_service_pb2.CancelRunRequest(run_id=run_id)).run

    def watch_run(
        self, run_id: str, cursor: str | None = None, on_retry: Callable[[str], None] | None = None
    ) -> Iterator[watch_pb2.RunUpdate]:
        """History then live updates of one run, until its final status change."""

        def open_stream(at: str) -> Iterable[run_service_pb2.WatchRunResponse]:
            return self._runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run_id, cursor=at))

        return self._watch(open_stream, cursor or "", on_retry)

    def get_run_logs(self, run_id: str, page_size: int = 1000) -> list[common_pb2.LogLine]:
        """Every stored output line of the run, across all pages."""
        lines: list[common_pb2.LogLine] = []
        token = ""
        while True:
            request = run_service_pb2.GetRunLogsRequest(run_id=run_id, page_size=page_size, page_token=token)
            reply = self._unary(self._runs.GetRunLogs, request)
            lines.extend(reply.lines)
            token = reply.next_page_token
            if not token:
                return lines

    def get_run_metrics(
        self, run_id: str, names: Sequence[str] = (), max_points: int = 0
    ) -> list[common_pb2.MetricPoint]:
        """The run's points in logged order; with `max_points`, at most that many per metric (downsampled)."""
        return list(self.metric_history(run_id, names, max_points).points)

    def metric_history(
        self, run_id: str, names: Sequence[str] = (), max_points: int = 0
    ) -> run_service_pb2.GetRunMetricsResponse:
        """Points (at most `max_points` per metric when set) and each metric's total point count.

        Downsampling keeps each metric's first, last, smallest and largest point and
        picks the rest at evenly spaced steps (the rule is in run_service.proto).
        """
        request = run_service_pb2.GetRunMetricsRequest(run_id=run_id, names=list(names), max_points=max_points)
        return self._unary(self._runs.GetRunMetrics, request)  # type: ignore[no-any-return]

    # -- admin ------------------------------------------------------------------------------

    def list_agents(self, page_size: int = 100) -> list[resources_pb2.Agent]:
        agents: list[resources_pb2.Agent] = []
        token = ""
        while True:
            request = admin_service_pb2.ListAgentsRequest(page_size=page_size, page_token=token)
            reply = self._unary(self._admin.ListAgents, request)
            agents.extend(reply.agents)
            token = reply.next_page_token
            if not token:
                return agents

    def rebuild_projections(self) -> admin_service_pb2.RebuildProjectionsResponse:
        # Replaying a long log takes a while: no per-call deadline beyond a generous hour.
        request = admin_service_pb2.RebuildProjectionsRequest()
        return self._unary(self._admin.RebuildProjections, request, timeout_s=3600.0)

    def whoami(self) -> admin_service_pb2.WhoAmIResponse:
        """The account and role of this client's API key."""
        return self._unary(self._admin.WhoAmI, admin_service_pb2.WhoAmIRequest())

    def create_account(
        self,
        account_id: str,
        name: str = "",
        gpu_quota: int = 1,
        max_queued_runs: int = 0,
        run_quota: int = 0,
        storage_prefixes: Sequence[str] = (),
    ) -> resources_pb2.Account:
        """Admin: a new account with its plan and storage (none: s3://ACCOUNT/). Not retried: it would be taken."""
        request = admin_service_pb2.CreateAccountRequest(
            account_id=account_id,
            name=name,
            gpu_quota=gpu_quota,
            max_queued_runs=max_queued_runs,
            run_quota=run_quota,
            storage_prefixes=storage_prefixes,
        )
        return self._once(self._admin.CreateAccount, request).account

    def list_accounts(self, page_size: int = 100) -> Iterator[resources_pb2.Account]:
        """Admin: every account in id order, with its GPUs in use and queued runs."""
        token = ""
        while True:
            request = admin_service_pb2.ListAccountsRequest(page_size=page_size, page_token=token)
            reply = self._unary(self._admin.ListAccounts, request)
            yield from reply.accounts
            token = reply.next_page_token
            if not token:
                return

    def set_quota(
        self, account_id: str, gpu_quota: int, max_queued_runs: int = 0, run_quota: int = 0
    ) -> resources_pb2.Account:
        """Admin: replace an account's plan (every limit; 0 = no cap for the run limits)."""
        request = admin_service_pb2.SetQuotaRequest(
            account_id=account_id, gpu_quota=gpu_quota, max_queued_runs=max_queued_runs, run_quota=run_quota
        )
        return self._unary(self._admin.SetQuota, request).account

    def set_account_preemption(self, account_id: str, preemptible: bool) -> resources_pb2.Account:
        """Admin: allow or forbid the scheduler to preempt the account's runs."""
        request = admin_service_pb2.SetAccountPreemptionRequest(account_id=account_id, preemptible=preemptible)
        return self._unary(self._admin.SetAccountPreemption, request).account

    def set_account_storage(
        self, account_id: str, allow: Sequence[str] = (), revoke: Sequence[str] = ()
    ) -> resources_pb2.Account:
        """Admin: grant and revoke storage prefixes of an account; the same call again changes nothing."""
        request = admin_service_pb2.SetAccountStorageRequest(account_id=account_id, allow=allow, revoke=revoke)
        return self._unary(self._admin.SetAccountStorage, request).account

    def create_api_key(
        self,
        account_id: str,
        role: common_pb2.Role.ValueType = common_pb2.ROLE_USER,
        name: str = "",
        agent_id: str = "",
        nats_public_key: str = "",
    ) -> admin_service_pb2.CreateApiKeyResponse:
        """Admin: a new key; the reply's `secret` is shown this once and stored nowhere. Not retried.

        An agent key needs `agent_id`; `nats_public_key` records the agent's NATS user (runyard.natsauth).
        """
        request = admin_service_pb2.CreateApiKeyRequest(
            account_id=account_id, role=role, name=name, agent_id=agent_id, nats_public_key=nats_public_key
        )
        return self._once(self._admin.CreateApiKey, request)

    def list_api_keys(self, account_id: str = "") -> list[resources_pb2.ApiKey]:
        """Admin: every key (or one account's), without secrets."""
        request = admin_service_pb2.ListApiKeysRequest(account_id=account_id)
        return list(self._unary(self._admin.ListApiKeys, request).keys)

    def revoke_api_key(self, key_id: str) -> resources_pb2.ApiKey:
        """Admin: disable a key for good (within seconds on every replica)."""
        request = admin_service_pb2.RevokeApiKeyRequest(key_id=key_id)
        return self._unary(self._admin.RevokeApiKey, request).key

    def set_experiment_priority(self, experiment_id: str, priority: int) -> None:
        """Admin: higher runs first within its account's queue."""
        request = admin_service_pb2.SetExperimentPriorityRequest(experiment_id=experiment_id, priority=priority)
        self._unary(self._admin.SetExperimentPriority, request)

    def drain_agent(self, agent_id: str, undrain: bool = False) -> resources_pb2.Agent:
        """Admin: the agent finishes its runs and takes no new one (`undrain` reverses it)."""
        request = admin_service_pb2.DrainAgentRequest(agent_id=agent_id, undrain=undrain)
        return self._unary(self._admin.DrainAgent, request).agent

    # -- usage ------------------------------------------------------------------------------

    def get_usage(
        self,
        account_id: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        period: str = "day",
    ) -> usage_service_pb2.GetUsageResponse:
        """Billed GPU-seconds per account, UTC period ("day" or "month") and GPU model, in [start, end).

        `account_id` "" means your own account (for an admin: every account).
        """
        periods = {"day": usage_service_pb2.USAGE_PERIOD_DAY, "month": usage_service_pb2.USAGE_PERIOD_MONTH}
        if period not in periods:
            raise ClientError(f"period must be day or month, not {period!r}")
        request = usage_service_pb2.GetUsageRequest(account_id=account_id, period=periods[period])
        if start is not None:
            getattr(request, "from").FromDatetime(start)
        if end is not None:
            request.to.FromDatetime(end)
        return self._unary(self._usage.GetUsage, request)

    def list_run_usage(
        self, account_id: str = "", experiment_id: str = "", page_size: int = 100
    ) -> Iterator[usage_service_pb2.AttemptUsage]:
        """Every billed attempt, oldest first, fetching pages as the iteration goes."""
        token = ""
        while True:
            request = usage_service_pb2.ListRunUsageRequest(
                account_id=account_id, experiment_id=experiment_id, page_size=page_size, page_token=token
            )
            reply = self._unary(self._usage.ListRunUsage, request)
            yield from reply.attempts
            token = reply.next_page_token
            if not token:
                return

    # -- plumbing ---------------------------------------------------------------------------

    def _unary(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        timeout = timeout_s or self.call_timeout_s
        return self._retrying(lambda: method(request, timeout=timeout))

    def _once(self, method: Callable[..., T], request: Any) -> T:
        """One try: for creates that carry no request id, where a retry could act twice."""
        try:
            return method(request, timeout=self.call_timeout_s)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _retrying(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_s
        backoff = _Backoff()
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                error = self._error(e)
                if _code(e) not in _RETRYABLE or time.monotonic() >= deadline:
                    raise error from None
                self._sleep_until_ready(backoff.next(), deadline, error)

    def _watch(
        self, open_stream: Callable[[str], Iterable[Any]], cursor: str, on_retry: Callable[[str], None] | None
    ) -> Iterator[watch_pb2.RunUpdate]:
        """Yield updates, reconnecting on a broken stream and resuming after the last cursor yielded.

        The outage budget (`watch_retry_s`) restarts whenever an update arrives, so a long watch
        survives any number of server restarts but gives up on an outage that lasts.
        `on_retry` hears, in words, each time the stream is reopened.
        """
        deadline = time.monotonic() + self.watch_retry_s
        backoff = _Backoff()
        while True:
            stream = open_stream(cursor)
            try:
                for response in stream:
                    update: watch_pb2.RunUpdate = response.update
                    cursor = update.cursor or cursor
                    deadline = time.monotonic() + self.watch_retry_s
                    backoff.reset()
                    yield update
                return
            except grpc.RpcError as e:
                error = self._error(e)
                if not _stream_broken(e) or time.monotonic() >= deadline:
                    raise error from None
                if on_retry is not None:
                    where = f"after {cursor}" if cursor else "from the start"
                    on_retry(f"lost the stream ({_code(e).name}); reconnecting to {self.endpoint}, resuming {where}")
                self._sleep_until_ready(backoff.next(), deadline, error)
            finally:
                cancel = getattr(stream, "cancel", None)
                if cancel is not None:
                    cancel()

    def _sleep_until_ready(self, pause_s: float, deadline: float, error: ClientError) -> None:
        time.sleep(min(pause_s, max(0.0, deadline - time.monotonic())))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error
        try:
            grpc.channel_ready_future(self._channel).result(timeout=remaining)
        except grpc.FutureTimeoutError:
            raise error from None

    def _error(self, e: grpc.RpcError) -> ClientError:
        if _code(e) == grpc.StatusCode.UNAVAILABLE:
            details = (e.details() if isinstance(e, grpc.Call) else "") or ""
            if any(hint in details.lower() for hint in _NO_CONNECTION_HINTS):
                return ServerUnreachable(self.endpoint)
        return ApiError.from_rpc(e)


def default_api_key(endpoint: str) -> str:
    """The key the CLI would use for `endpoint`: env, config file, or that stack's state file."""
    from runyard.config import ConfigError, load_settings

    try:
        return load_settings({"endpoint": endpoint}).api_key or ""
    except ConfigError:
        return ""


class _Backoff:
    """Exponential backoff with jitter: 0.2 s doubling up to 2 s."""

    def __init__(self) -> None:
        self._next = 0.2

    def reset(self) -> None:
        self._next = 0.2

    def next(self) -> float:
        pause = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, 2.0)
        return pause


def _code(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN


def _stream_broken(e: grpc.RpcError) -> bool:
    """A watch cut off by the connection (server restart, replica switch), not refused by the server.

    A server shutting down may end open streams with CANCELLED or with an RST_STREAM seen as
    INTERNAL; the watch never cancels itself mid-iteration, so those mean the same as UNAVAILABLE.
    """
    code = _code(e)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return True
    details = ((e.details() if isinstance(e, grpc.Call) else "") or "").lower()
    return code == grpc.StatusCode.INTERNAL and ("rst_stream" in details or "received" in details)
