"""Authorization on every RPC, against a live server (PostgreSQL, NATS, an agent).

Two accounts, alpha and beta. Beta has an experiment with a finished run (logs,
metrics, usage). With alpha's user key, every RPC of every service either
refuses (NOT_FOUND or PERMISSION_DENIED) or answers with alpha's data only:
nothing of beta's ever comes back. The services' methods are read from the
proto descriptors, so an RPC added without a case here fails the test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from runyard import bus
from runyard.v1 import (
    admin_service_pb2,
    agent_pb2,
    common_pb2,
    events_pb2,
    experiment_service_pb2,
    run_service_pb2,
)
from tests.integration.api.helpers import RS, create, manifest, wait_state, watch_all
from tests.support.services import NatsServer, postgres_database, wait_until
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

try:
    from runyard.v1 import usage_service_pb2
except ImportError:  # pragma: no cover - before UsageService existed
    usage_service_pb2 = None  # type: ignore[assignment]

SERVICE_MODULES: list[ModuleType] = [
    m for m in (experiment_service_pb2, run_service_pb2, admin_service_pb2, usage_service_pb2) if m is not None
]
REFUSED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}
METRIC_RUN = "python -c \"print('hello from beta'); print('acc=0.5')\""


def services() -> list[ServiceDescriptor]:
    return [s for m in SERVICE_MODULES for s in m.DESCRIPTOR.services_by_name.values()]


def every_method() -> list[tuple[ServiceDescriptor, MethodDescriptor]]:
    return [(s, m) for s in services() for m in s.methods]


def path(service: ServiceDescriptor, method: MethodDescriptor) -> str:
    return f"/{service.full_name}/{method.name}"


def call(channel: grpc.Channel, service: ServiceDescriptor, method: MethodDescriptor, request: Message | None) -> Any:
    """Any RPC by its descriptor; a streaming response is read to its end."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    request = request if request is not None else request_cls()
    kwargs: dict[str, Any] = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    name = path(service, method)
    if method.client_streaming:
        return channel.stream_unary(name, **kwargs)(iter([request]), timeout=20)
    if method.server_streaming:
        return list(channel.unary_stream(name, **kwargs)(request, timeout=20))
    return channel.unary_unary(name, **kwargs)(request, timeout=20)


def code(err: grpc.RpcError) -> grpc.StatusCode:
    return err.code()  # type: ignore[no-any-return, attr-defined]


@dataclass
class World:
    stack: Stack
    admin: Stubs
    alpha_key: str
    beta_key: str
    beta_experiment: str
    beta_run: str
    beta_request_id: str
    channels: list[grpc.Channel]

    def channel(self, key: str) -> grpc.Channel:
        channel = self.stack.channel(key)
        self.channels.append(channel)
        return channel

    def stubs(self, key: str) -> Stubs:
        return Stubs(self.channel(key))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One server and agent for the whole module: the matrix only reads, refuses or touches alpha."""
    root: Path = tmp_path_factory.mktemp("auth")
    with postgres_database() as url:
        nats_server = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats_server.url, storage_root=(root / "objects").as_uri())
        channels: list[grpc.Channel] = []
        try:
            stack.start_server()
            stack.start_agent("agent-1", 2)
            admin_channel = stack.channel()
            channels.append(admin_channel)
            admin = Stubs(admin_channel)
            keys = {}
            for account in ("alpha", "beta"):
                admin.admin.CreateAccount(
                    # Both may write the bucket the helpers' manifests name (results: s3://results/NAME).
                    admin_service_pb2.CreateAccountRequest(
                        account_id=account, gpu_quota=2, storage_prefixes=["s3://results/"]
                    ),
                    timeout=20,
                )
                reply = admin.admin.CreateApiKey(
                    admin_service_pb2.CreateApiKeyRequest(account_id=account, role=common_pb2.ROLE_USER), timeout=20
                )
                keys[account] = reply.secret
            beta = Stubs(stack.channel(keys["beta"]))
            request_id = str(uuid.uuid4())
            body = manifest(METRIC_RUN, name="beta-exp", extra="metrics: {patterns: ['acc=(?P<acc>[0-9.]+)']}\n")
            exp = create(beta, body, request_id).experiment
            assert exp.account_id == "beta"
            run_id = exp.runs[0].id
            wait_state(beta, run_id, {RS.RUN_STATE_COMPLETED})
            yield World(stack, admin, keys["alpha"], keys["beta"], exp.id, run_id, request_id, channels)
        except BaseException:
            print(stack.logs())
            raise
        finally:
            for channel in channels:
                channel.close()
            stack.stop()
            nats_server.stop()


# -- what alpha's key may do with each RPC -------------------------------------------------


@dataclass(frozen=True)
class Case:
    """`request` is sent with alpha's key; `expect` is "refused" or a check of a successful reply."""

    request: Callable[[World], Message]
    expect: str | Callable[[World, Any], None] = "refused"


def _no_beta(world: World, reply: Any) -> None:
    text = str(reply)
    assert "beta" not in text and world.beta_experiment not in text and world.beta_run not in text, text


def _experiments_are_alphas(world: World, reply: experiment_service_pb2.ListExperimentsResponse) -> None:
    assert all(e.account_id == "alpha" for e in reply.experiments)
    _no_beta(world, reply)


def _runs_are_alphas(world: World, reply: run_service_pb2.ListRunsResponse) -> None:
    assert all(r.account_id == "alpha" for r in reply.runs)
    _no_beta(world, reply)


def _created_in_alpha(world: World, reply: experiment_service_pb2.CreateExperimentResponse) -> None:
    """The same client request id as beta's must not land on beta's experiment."""
    assert reply.experiment.account_id == "alpha"
    assert reply.experiment.id != world.beta_experiment
    _no_beta(world, reply)


def _is_alpha(world: World, reply: admin_service_pb2.WhoAmIResponse) -> None:
    assert (reply.account_id, reply.role) == ("alpha", common_pb2.ROLE_USER)


def _server_info(world: World, reply: admin_service_pb2.GetServerInfoResponse) -> None:
    assert reply.max_code_bytes > 0
    _no_beta(world, reply)


def _uploaded(world: World, reply: experiment_service_pb2.UploadCodeResponse) -> None:
    assert reply.size_bytes == len(b"alpha's code")


def _usage_rows_are_alphas(world: World, reply: Any) -> None:
    assert all(row.account_id == "alpha" for row in reply.rows)
    _no_beta(world, reply)


E, R, A = experiment_service_pb2, run_service_pb2, admin_service_pb2
CASES: dict[str, Case] = {
    "/runyard.v1.ExperimentService/UploadCode": Case(
        lambda w: E.UploadCodeRequest(chunk=b"alpha's code", total_bytes=12), _uploaded
    ),
    "/runyard.v1.ExperimentService/CreateExperiment": Case(
        lambda w: E.CreateExperimentRequest(
            manifest_yaml=manifest("true", name="alpha-exp"), client_request_id=w.beta_request_id
        ),
        _created_in_alpha,
    ),
    "/runyard.v1.ExperimentService/GetExperiment": Case(
        lambda w: E.GetExperimentRequest(experiment_id=w.beta_experiment)
    ),
    "/runyard.v1.ExperimentService/ListExperiments": Case(
        lambda w: E.ListExperimentsRequest(), _experiments_are_alphas
    ),
    "/runyard.v1.ExperimentService/CancelExperiment": Case(
        lambda w: E.CancelExperimentRequest(experiment_id=w.beta_experiment)
    ),
    "/runyard.v1.ExperimentService/PauseExperiment": Case(
        lambda w: E.PauseExperimentRequest(experiment_id=w.beta_experiment)
    ),
    "/runyard.v1.ExperimentService/ResumeExperiment": Case(
        lambda w: E.ResumeExperimentRequest(experiment_id=w.beta_experiment)
    ),
    "/runyard.v1.ExperimentService/WatchExperiment": Case(
        lambda w: E.WatchExperimentRequest(experiment_id=w.beta_experiment)
    ),
    "/runyard.v1.RunService/GetRun": Case(lambda w: R.GetRunRequest(run_id=w.beta_run)),
    "/runyard.v1.RunService/ListRuns": Case(
        lambda w: R.ListRunsRequest(experiment_id=w.beta_experiment), _runs_are_alphas
    ),
    "/runyard.v1.RunService/CancelRun": Case(lambda w: R.CancelRunRequest(run_id=w.beta_run)),
    "/runyard.v1.RunService/WatchRun": Case(lambda w: R.WatchRunRequest(run_id=w.beta_run)),
    "/runyard.v1.RunService/GetRunLogs": Case(lambda w: R.GetRunLogsRequest(run_id=w.beta_run)),
    "/runyard.v1.RunService/GetRunMetrics": Case(lambda w: R.GetRunMetricsRequest(run_id=w.beta_run)),
    "/runyard.v1.AdminService/RebuildProjections": Case(lambda w: A.RebuildProjectionsRequest()),
    "/runyard.v1.AdminService/ListAgents": Case(lambda w: A.ListAgentsRequest()),
    "/runyard.v1.AdminService/GetServerInfo": Case(lambda w: A.GetServerInfoRequest(), _server_info),
    "/runyard.v1.AdminService/CreateAccount": Case(lambda w: A.CreateAccountRequest(account_id="mallory")),
    "/runyard.v1.AdminService/ListAccounts": Case(lambda w: A.ListAccountsRequest()),
    "/runyard.v1.AdminService/SetQuota": Case(lambda w: A.SetQuotaRequest(account_id="alpha", gpu_quota=1000)),
    "/runyard.v1.AdminService/SetAccountPreemption": Case(
        lambda w: A.SetAccountPreemptionRequest(account_id="alpha", preemptible=False)
    ),
    "/runyard.v1.AdminService/SetAccountStorage": Case(
        lambda w: A.SetAccountStorageRequest(account_id="alpha", allow=["s3://beta/"])
    ),
    "/runyard.v1.AdminService/CreateApiKey": Case(
        lambda w: A.CreateApiKeyRequest(account_id="beta", role=common_pb2.ROLE_ADMIN)
    ),
    "/runyard.v1.AdminService/ListApiKeys": Case(lambda w: A.ListApiKeysRequest(account_id="beta")),
    "/runyard.v1.AdminService/RevokeApiKey": Case(lambda w: A.RevokeApiKeyRequest(key_id="key-anything")),
    "/runyard.v1.AdminService/SetExperimentPriority": Case(
        lambda w: A.SetExperimentPriorityRequest(experiment_id=w.beta_experiment, priority=-100)
    ),
    "/runyard.v1.AdminService/DrainAgent": Case(lambda w: A.DrainAgentRequest(agent_id="agent-1")),
    "/runyard.v1.AdminService/WhoAmI": Case(lambda w: A.WhoAmIRequest(), _is_alpha),
}
if usage_service_pb2 is not None:
    U = usage_service_pb2
    CASES.update(
        {
            "/runyard.v1.UsageService/GetUsage": Case(lambda w: U.GetUsageRequest(account_id="beta")),
            "/runyard.v1.UsageService/ListRunUsage": Case(lambda w: U.ListRunUsageRequest(account_id="beta")),
        }
    )
    # And without naming an account: the caller's own usage only.
    SCOPED_USAGE: dict[str, Case] = {
        "/runyard.v1.UsageService/GetUsage": Case(lambda w: U.GetUsageRequest(), _usage_rows_are_alphas),
        "/runyard.v1.UsageService/ListRunUsage": Case(
            lambda w: U.ListRunUsageRequest(experiment_id=w.beta_experiment), _no_beta
        ),
    }
else:  # pragma: no cover
    SCOPED_USAGE = {}


def test_every_rpc_has_an_authorization_case() -> None:
    methods = {path(s, m) for s, m in every_method()}
    assert not methods - CASES.keys(), f"RPCs without an authorization case: {sorted(methods - CASES.keys())}"
    assert not CASES.keys() - methods, f"cases for RPCs that do not exist: {sorted(CASES.keys() - methods)}"


def test_a_key_of_one_account_gets_no_data_of_another_on_any_rpc(world: World) -> None:
    channel = world.channel(world.alpha_key)
    checked = []
    for service, method in every_method():
        name = path(service, method)
        for case in (CASES[name], SCOPED_USAGE.get(name)):
            if case is None:
                continue
            request = case.request(world)
            if case.expect == "refused":
                with pytest.raises(grpc.RpcError) as err:
                    reply = call(channel, service, method, request)
                    pytest.fail(f"{name} answered alpha's key with {reply!r}")
                assert code(err.value) in REFUSED, f"{name}: {code(err.value)} {err.value}"
            else:
                assert callable(case.expect)
                case.expect(world, call(channel, service, method, request))
            checked.append(name)
    assert set(checked) == set(CASES)
    # Nothing alpha tried changed beta's experiment, quota or keys.
    beta = world.stubs(world.beta_key)
    exp = beta.experiments.GetExperiment(E.GetExperimentRequest(experiment_id=world.beta_experiment), timeout=10)
    assert exp.experiment.runs_by_state == {"RUN_STATE_COMPLETED": 1}
    assert exp.experiment.state == 2  # EXPERIMENT_STATE_COMPLETED, no cancel
    accounts = {a.id: a for a in world.admin.admin.ListAccounts(A.ListAccountsRequest(), timeout=10).accounts}
    assert "mallory" not in accounts and accounts["alpha"].gpu_quota == 2
    keys = world.admin.admin.ListApiKeys(A.ListApiKeysRequest(account_id="beta"), timeout=10).keys
    assert [k.role for k in keys] == [common_pb2.ROLE_USER]
    agents = world.admin.admin.ListAgents(A.ListAgentsRequest(), timeout=10).agents
    assert not any(a.draining for a in agents)


def test_the_owner_and_an_admin_see_what_other_keys_cannot(world: World) -> None:
    for key in (world.beta_key, world.stack.admin_key):
        stubs = world.stubs(key)
        run = stubs.runs.GetRun(R.GetRunRequest(run_id=world.beta_run), timeout=10).run
        assert run.account_id == "beta"
        logs = stubs.runs.GetRunLogs(R.GetRunLogsRequest(run_id=world.beta_run), timeout=10)
        assert "hello from beta" in [line.text for line in logs.lines]
        assert [u.run_id for u in watch_all(stubs, world.beta_run)][-1] == world.beta_run
    # An admin lists every account's experiments; beta only its own.
    admin_ids = {e.id for e in world.admin.experiments.ListExperiments(E.ListExperimentsRequest()).experiments}
    beta_ids = {
        e.account_id
        for e in world.stubs(world.beta_key).experiments.ListExperiments(E.ListExperimentsRequest()).experiments
    }
    assert world.beta_experiment in admin_ids and beta_ids == {"beta"}


@pytest.mark.parametrize("key", ["", "ry_not-a-key-anybody-was-given", "Bearer"])
def test_a_missing_or_wrong_key_is_unauthenticated_on_every_rpc(world: World, key: str) -> None:
    channel = world.channel(key)
    for service, method in every_method():
        with pytest.raises(grpc.RpcError) as err:
            call(channel, service, method, None)
        assert code(err.value) == grpc.StatusCode.UNAUTHENTICATED, path(service, method)
        assert "authorization: Bearer" in str(err.value.details())  # type: ignore[attr-defined]


def test_health_and_reflection_need_no_key(world: World) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = world.channel("")
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for r in stream for s in r.list_services_response.service}
    assert "runyard.v1.AdminService" in names


def test_an_agent_key_may_call_no_rpc(world: World) -> None:
    channel = world.channel(world.stack.agent_key)
    for service, method in every_method():
        with pytest.raises(grpc.RpcError) as err:
            call(channel, service, method, None)
        assert code(err.value) == grpc.StatusCode.PERMISSION_DENIED, path(service, method)
    with pytest.raises(grpc.RpcError) as err:
        create(Stubs(channel), manifest("true", name="from-an-agent"))
    assert code(err.value) == grpc.StatusCode.PERMISSION_DENIED
    assert "agent keys only report over NATS" in str(err.value.details())  # type: ignore[attr-defined]


def test_a_revoked_key_stops_working_within_seconds(world: World) -> None:
    created = world.admin.admin.CreateApiKey(A.CreateApiKeyRequest(account_id="alpha", name="to revoke"), timeout=10)
    assert created.secret.startswith("ry_") and created.key.role == common_pb2.ROLE_USER
    stubs = world.stubs(created.secret)
    assert stubs.admin.WhoAmI(A.WhoAmIRequest(), timeout=10).key_id == created.key.id
    revoked = world.admin.admin.RevokeApiKey(A.RevokeApiKeyRequest(key_id=created.key.id), timeout=10).key
    assert revoked.revoked

    def refused_now() -> bool:
        try:
            stubs.admin.WhoAmI(A.WhoAmIRequest(), timeout=10)
        except grpc.RpcError as err:
            assert code(err) == grpc.StatusCode.UNAUTHENTICATED
            return True
        return False

    started = time.monotonic()
    wait_until(refused_now, 10, "the revoked key kept working")
    assert time.monotonic() - started < 5
    listed = world.admin.admin.ListApiKeys(A.ListApiKeysRequest(account_id="alpha"), timeout=10).keys
    assert [k.revoked for k in listed if k.id == created.key.id] == [True]


def test_admin_rpcs_manage_accounts_quotas_keys_and_drain(world: World) -> None:
    admin = world.admin.admin
    made = admin.CreateAccount(A.CreateAccountRequest(account_id="gamma", name="Gamma Ltd", gpu_quota=1), timeout=10)
    assert (made.account.id, made.account.name, made.account.gpu_quota) == ("gamma", "Gamma Ltd", 1)
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateAccount(A.CreateAccountRequest(account_id="gamma"), timeout=10)
    assert code(err.value) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateAccount(A.CreateAccountRequest(account_id="Not Valid"), timeout=10)
    assert code(err.value) == grpc.StatusCode.INVALID_ARGUMENT and "account_id" in str(err.value.details())  # type: ignore[attr-defined]
    quota = admin.SetQuota(A.SetQuotaRequest(account_id="gamma", gpu_quota=4, max_queued_runs=10), timeout=10)
    assert (quota.account.gpu_quota, quota.account.max_queued_runs) == (4, 10)
    with pytest.raises(grpc.RpcError) as err:
        admin.SetQuota(A.SetQuotaRequest(account_id="nobody", gpu_quota=1), timeout=10)
    assert code(err.value) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateApiKey(A.CreateApiKeyRequest(account_id="nobody"), timeout=10)
    assert code(err.value) == grpc.StatusCode.NOT_FOUND
    # A second admin, of another account, may act on every account.
    gamma_admin = admin.CreateApiKey(
        A.CreateApiKeyRequest(account_id="gamma", role=common_pb2.ROLE_ADMIN), timeout=10
    ).secret
    other = world.stubs(gamma_admin)
    ids = {a.id for a in other.admin.ListAccounts(A.ListAccountsRequest(), timeout=10).accounts}
    assert {"default", "alpha", "beta", "gamma"} <= ids
    drained = other.admin.DrainAgent(A.DrainAgentRequest(agent_id="agent-1"), timeout=10).agent
    assert drained.draining and drained.id == "agent-1"
    undrained = other.admin.DrainAgent(A.DrainAgentRequest(agent_id="agent-1", undrain=True), timeout=10).agent
    assert not undrained.draining
    with pytest.raises(grpc.RpcError) as err:
        other.admin.DrainAgent(A.DrainAgentRequest(agent_id="no-such-agent"), timeout=10)
    assert code(err.value) == grpc.StatusCode.NOT_FOUND
    other.admin.SetExperimentPriority(
        A.SetExperimentPriorityRequest(experiment_id=world.beta_experiment, priority=7), timeout=10
    )
    with pytest.raises(grpc.RpcError) as err:
        other.admin.SetExperimentPriority(A.SetExperimentPriorityRequest(experiment_id="exp-nope", priority=1))
    assert code(err.value) == grpc.StatusCode.NOT_FOUND


# -- agent reports over NATS -----------------------------------------------------------------


async def _publish(url: str, headers: dict[str, str] | None, report: agent_pb2.AgentReport, subject: str = "") -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.publish(subject or bus.reports_subject(report.agent_id), report.SerializeToString(), headers=headers)
    await nc.close()


def _log(run_id: str, attempt: int, text: str, agent_id: str = "agent-1") -> agent_pb2.AgentReport:
    line = common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text=text)
    return agent_pb2.AgentReport(
        event_id=str(uuid.uuid4()),
        agent_id=agent_id,
        run_id=run_id,
        logged=events_pb2.RunLogged(run_id=run_id, attempt=attempt, lines=[line]),
    )


def test_only_a_valid_agent_key_gets_reports_stored(world: World) -> None:
    stack, admin = world.stack, world.admin
    alpha = world.stubs(world.alpha_key)
    run_id = create(alpha, manifest('python -c "import time; time.sleep(60)"', name="long")).experiment.runs[0].id
    running = wait_state(alpha, run_id, {RS.RUN_STATE_RUNNING}).run
    assert running.agent_id == "agent-1"
    narrowed = admin.admin.CreateApiKey(
        A.CreateApiKeyRequest(account_id="default", role=common_pb2.ROLE_AGENT, agent_id="agent-2"), timeout=10
    ).secret

    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    attempts: list[tuple[dict[str, str] | None, agent_pb2.AgentReport, str]] = [
        (None, _log(run_id, 1, "no key"), ""),
        (bearer("ry_forged"), _log(run_id, 1, "unknown key"), ""),
        (bearer(world.alpha_key), _log(run_id, 1, "a user key"), ""),
        (bearer(stack.admin_key), _log(run_id, 1, "an admin key"), ""),
        (bearer(narrowed), _log(run_id, 1, "an agent key of another agent"), ""),
        # agent-1's key speaking as another agent (which does not hold the run either).
        (bearer(stack.agent_key), _log(run_id, 1, "not the holder", agent_id="agent-9"), ""),
        # The right key, the wrong subject.
        (bearer(stack.agent_key), _log(run_id, 1, "wrong subject"), bus.reports_subject("agent-9")),
    ]
    for headers, report, subject in attempts:
        asyncio.run(_publish(stack.nats_url, headers, report, subject))
    intruder = agent_pb2.AgentReport(
        event_id=str(uuid.uuid4()),
        agent_id="agent-1",
        registered=events_pb2.AgentRegistered(agent_id="intruder", hostname="x", slots=8),
    )
    asyncio.run(_publish(stack.nats_url, bearer(stack.agent_key), intruder))
    asyncio.run(_publish(stack.nats_url, bearer(stack.agent_key), _log(run_id, 1, "marker")))

    def stored() -> list[str] | None:
        lines = alpha.runs.GetRunLogs(R.GetRunLogsRequest(run_id=run_id), timeout=10).lines
        texts = [ln.text for ln in lines]
        return texts if "marker" in texts else None

    texts = wait_until(stored, 30, "the marker report was never stored")
    refused_texts = {report.logged.lines[0].text for _, report, _ in attempts}
    assert not refused_texts & set(texts), texts
    agents = {a.id for a in admin.admin.ListAgents(A.ListAgentsRequest(), timeout=10).agents}
    assert "intruder" not in agents
    alpha.runs.CancelRun(R.CancelRunRequest(run_id=run_id), timeout=10)
    wait_state(alpha, run_id, {RS.RUN_STATE_CANCELED})


def test_an_agent_without_a_key_is_never_registered(world: World) -> None:
    """Its registration is refused, so no run is ever placed on it."""
    stack = world.stack
    saved, stack.agent_key = stack.agent_key, ""
    try:
        proc = stack.start_agent("keyless", 1)
    finally:
        stack.agent_key = saved
    try:
        server = stack.servers[0]
        wait_until(
            lambda: any("report refused" in line and '"keyless"' in line for line in server.output().splitlines()),
            30,
            "the keyless agent's registration was never refused",
        )
        agents = {a.id for a in world.admin.admin.ListAgents(A.ListAgentsRequest(), timeout=10).agents}
        assert "keyless" not in agents
        assert "no API key" in proc.output()
    finally:
        proc.stop()
        stack.agents.remove(proc)
