"""A read model that fails on an event skips it, says so, and stops nothing else.

The failure is forced with a projector that raises on one log position (a
stand-in for a projector bug). Before the fix, the runner retried the failing
batch forever: every read model froze, catch-up at start raised (the server
exited), and a rebuild failed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Connection, select

from runyard.server.bootstrap import READ_MODELS_HEALTH, start_replica
from runyard.server.config import ServerConfig
from runyard.server.domain.events import encode
from runyard.server.projections import schema
from runyard.server.projections.read_models import RunsProjector
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.store import EventStore, NewEvent, RecordedEvent
from runyard.v1 import admin_service_pb2, admin_service_pb2_grpc, common_pb2, events_pb2
from runyard.v1 import experiment_service_pb2 as xp
from runyard.v1 import experiment_service_pb2_grpc as xp_grpc
from tests.integration.api.helpers import manifest
from tests.support.services import NatsServer, free_port


def _append(store: EventStore, stream: str, message: Message) -> int:
    type_name, data = encode(message)
    return store.append(stream, [NewEvent(type=type_name, data=data, event_id=uuid.uuid4())]).last_position


def _created(run_id: str) -> events_pb2.RunCreated:
    spec = common_pb2.RunSpec(command="true", resources=common_pb2.Resources(gpus=1))
    return events_pb2.RunCreated(run_id=run_id, experiment_id="exp-1", account_id="acme", spec=spec)


def _fail_runs_at(monkeypatch: pytest.MonkeyPatch, positions: set[int], experiments: Sequence[str] = ()) -> None:
    """The runs read model raises on any batch holding one of `positions`, or the creation of an
    experiment named in `experiments` (a projector bug)."""
    original = RunsProjector.apply

    def failing(self: RunsProjector, conn: Connection, decoded: Sequence[tuple[RecordedEvent, Message]]) -> None:
        for event, msg in decoded:
            doomed = isinstance(msg, events_pb2.ExperimentCreated) and msg.name in experiments
            if event.position in positions or doomed:
                raise RuntimeError(f"projector bug at position {event.position}")
        original(self, conn, decoded)

    monkeypatch.setattr(RunsProjector, "apply", failing)


def _run_ids(store: EventStore) -> set[str]:
    with store.read_engine.connect() as conn:
        return set(conn.execute(select(schema.runs.c.id)).scalars())


def test_a_failing_read_model_skips_the_event_and_the_others_go_on(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _append(store, "account:acme", events_pb2.AccountCreated(account_id="acme", name="Acme", gpu_quota=2))
    bad = _append(store, "run:r1", _created("r1"))
    _append(store, "run:r1", events_pb2.RunAssigned(attempt=1, agent_id="a1", gpu_ids=["0"]))
    _append(store, "run:r2", _created("r2"))
    _fail_runs_at(monkeypatch, {bad})

    runner = ProjectionRunner(store, batch_size=100)
    runner.catch_up()  # raised (and retried forever in the follower) before the fix

    assert runner.position == store.head_position()
    [failure] = runner.failures()
    assert (failure.read_model, failure.position, failure.event_type) == ("runs", bad, "runyard.v1.RunCreated")
    assert "projector bug at position" in failure.error and failure.skipped == 1
    assert _run_ids(store) == {"r2"}, "the runs read model applied the events around the bad one"
    with store.read_engine.connect() as conn:  # the other read models applied everything
        assert conn.execute(select(schema.attempt_usage.c.run_id)).scalars().all() == ["r1"]
        assert conn.execute(select(schema.accounts.c.id)).scalars().all() == ["acme"]

    # Later events go on being projected; a restarted runner starts and still reports the failure.
    _append(store, "run:r3", _created("r3"))
    restarted = ProjectionRunner(store)
    restarted.catch_up()
    assert _run_ids(store) == {"r2", "r3"}
    [again] = restarted.failures()
    assert (again.read_model, again.position, again.event_type) == ("runs", bad, "runyard.v1.RunCreated")
    assert "server log" in again.error

    # Once the bug is gone, a rebuild applies the event and the failure is cleared.
    monkeypatch.undo()
    restarted.rebuild()
    assert restarted.failures() == []
    assert _run_ids(store) == {"r1", "r2", "r3"}


def test_a_live_server_reports_the_failure_keeps_taking_submits_and_restarts(
    tmp_path: Path, pg_url: str, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServerConfig(
        listen=f"127.0.0.1:{free_port()}",
        database_url=pg_url,
        nats_url=nats_server.url,
        storage_root=(tmp_path / "objects").as_uri(),
        bootstrap_keys_file=str(tmp_path / "keys.yaml"),
        bootstrap_storage_prefixes=("s3://results/",),
    )
    failing: set[int] = set()
    doomed = ["doomed"]
    _fail_runs_at(monkeypatch, failing, experiments=doomed)

    async def scenario() -> None:
        replica = await start_replica(config)
        admin_key = yaml.safe_load((tmp_path / "keys.yaml").read_text())["admin_key"]
        metadata = (("authorization", f"Bearer {admin_key}"),)
        try:
            async with grpc.aio.insecure_channel(config.listen) as channel:
                admin = admin_service_pb2_grpc.AdminServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                experiments = xp_grpc.ExperimentServiceStub(channel)
                bad = await asyncio.to_thread(_append, replica.ctx.store, "run:r-bad", _created("r-bad"))
                failing.add(bad)
                info = await _until_failure(admin, metadata)
                [failure] = info.read_model_failures
                assert (failure.read_model, failure.position) == ("runs", bad)
                assert "projector bug" in failure.error
                assert await _until_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)
                # Submits go on (not UNAVAILABLE "read model lags"), for this account as for any.
                reply = await experiments.CreateExperiment(
                    xp.CreateExperimentRequest(manifest_yaml=manifest("true", name="after-failure")),
                    metadata=metadata,
                    timeout=30,
                )
                assert reply.experiment.id
                # The one experiment whose own event is skipped is told so, not "lags; retry".
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await experiments.CreateExperiment(
                        xp.CreateExperimentRequest(manifest_yaml=manifest("true", name="doomed")),
                        metadata=metadata,
                        timeout=30,
                    )
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "could not project it" in str(caught.value.details())
        finally:
            await replica.close(1.0)

        # A restart starts (catch-up does not exit) and still reports the failure, until a rebuild.
        replica = await start_replica(config)
        try:
            async with grpc.aio.insecure_channel(config.listen) as channel:
                admin = admin_service_pb2_grpc.AdminServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                info = await admin.GetServerInfo(admin_service_pb2.GetServerInfoRequest(), metadata=metadata, timeout=5)
                assert [f.position for f in info.read_model_failures] == [bad]
                failing.clear()
                doomed.clear()
                await admin.RebuildProjections(
                    admin_service_pb2.RebuildProjectionsRequest(), metadata=metadata, timeout=60
                )
                info = await admin.GetServerInfo(admin_service_pb2.GetServerInfoRequest(), metadata=metadata, timeout=5)
                assert list(info.read_model_failures) == []
                assert await _until_health(health, health_pb2.HealthCheckResponse.SERVING)
        finally:
            await replica.close(1.0)

    asyncio.run(scenario())


async def _until_failure(admin: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        info = await admin.GetServerInfo(admin_service_pb2.GetServerInfoRequest(), metadata=metadata, timeout=5)
        if info.read_model_failures or asyncio.get_running_loop().time() > deadline:
            return info
        await asyncio.sleep(0.05)


async def _until_health(health: Any, wanted: int) -> bool:
    """Whether READ_MODELS_HEALTH reaches `wanted` within 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=READ_MODELS_HEALTH), timeout=5)
        if reply.status == wanted:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
