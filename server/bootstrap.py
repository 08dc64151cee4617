"""The composition root: builds one control-plane replica from its config.

Everything is wired here and handed down explicitly: the event store, the
read-model runner, the application's bus (its handlers, with what a submit is
checked against, and the effects of each committed event type), object
storage, NATS, and the adapters that turn what arrives into commands: the
scheduler, the ingest, the experiment driver and the gRPC servicers. Tests
build a replica the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runyard import bus, natsauth
from runyard.objectstore import open_store
from runyard.server.api.admin import AdminService
from runyard.server.api.auth import AuthInterceptor
from runyard.server.api.edge import EdgeInterceptor
from runyard.server.api.experiments import ExperimentService
from runyard.server.api.head import LogHead
from runyard.server.api.runs import RunService
from runyard.server.api.usage import UsageService
from runyard.server.api.watching import Watcher
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import SettlePausedRun
from runyard.server.app.effects import effects
from runyard.server.app.experiments import SubmitChecks
from runyard.server.app.handlers import handlers
from runyard.server.app.storage_access import SubmitStorageCheck
from runyard.server.config import ServerConfig
from runyard.server.context import ServerContext
from runyard.server.credentials import Credentials
from runyard.server.first_run import ensure_first_account
from runyard.server.ingest.agent_auth import AgentAuth
from runyard.server.ingest.consumer import Ingest
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.accounts import AccountQueries
from runyard.server.queries.queue_explainer import QueueExplainer
from runyard.server.queries.resources import Queries
from runyard.server.queries.scheduling import SchedulingReads
from runyard.server.scheduler.leader import LeaderLease
from runyard.server.scheduler.scheduler import Scheduler
from runyard.server.search_driver import SearchDriver
from runyard.server.store import EventStore
from runyard.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"].full_name,
    run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    usage_service_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
)


@dataclass
class Replica:
    """A running replica; `port` is the bound gRPC port."""

    ctx: ServerContext
    bus: MessageBus
    server: grpc.aio.Server
    port: int
    scheduler: Scheduler
    ingest: Ingest
    driver: SearchDriver
    tasks: list[asyncio.Task[None]]
    stop: asyncio.Event
    nc: Any
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    unsubscribe: Callable[[], None]

    async def close(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=grace + 2)
        self.unsubscribe()
        await asyncio.to_thread(self.ctx.projections.stop)
        # Every report taken was acked or nak'ed by now; drain() would wait on the
        # idle pull subscription, so close instead.
        with contextlib.suppress(Exception):
            await self.nc.close()
        await asyncio.to_thread(self.ctx.store.close)


async def start_replica(config: ServerConfig) -> Replica:
    import nats

    config.check()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=48, thread_name_prefix="runyard-io"))
    store = await asyncio.to_thread(EventStore.open, config.database_url, pool_size=20, max_overflow=40)
    projections = ProjectionRunner(store)
    await asyncio.to_thread(projections.catch_up)
    projections.start()
    ctx = ServerContext(
        config=config,
        store=store,
        queries=Queries(store.read_engine),
        projections=projections,
        objects=open_store(config.storage_root, config.s3_endpoint_url),
    )
    storage = SubmitStorageCheck(config, ctx.objects)
    scheduling_reads = SchedulingReads(store.snapshot_engine)
    checks = SubmitChecks(storage, scheduling_reads, ctx.queries.queue_room)
    app = MessageBus(store, handlers(checks), loop=loop)
    accounts = AccountQueries(store.read_engine)
    if config.bootstrap_keys_file:
        await asyncio.to_thread(
            ensure_first_account,
            app,
            accounts,
            Path(config.bootstrap_keys_file),
            config.default_gpu_quota,
            config.bootstrap_agent_id,
            config.bootstrap_storage_prefixes,
        )
        # The keys must be known to the auth path before the first call arrives.
        await asyncio.to_thread(projections.catch_up)
    elif await asyncio.to_thread(accounts.count_accounts) == 0:
        log.warning("no account exists yet: start with --bootstrap-keys FILE to create one with an admin key")
    credentials = Credentials(accounts.key_by_hash)
    head = LogHead(loop, await asyncio.to_thread(store.head_position))
    unsubscribe = store.on_commit(head.notify_threadsafe)

    # The control plane's own NATS user, when the operator's nats-server has users (runyard.natsauth).
    if not config.nats_nkey_file:
        log.warning(
            "connecting to NATS without credentials: unless its nats-server has users, anyone who reaches it can "
            "cancel runs and pose as agents (see `runyard admin nats-config`)",
            nats_url=config.nats_url,
        )
    nats_auth = natsauth.connect_options(config.nats_url, config.nats_nkey_file, config.nats_ca_file)
    nc = await nats.connect(
        config.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5, **nats_auth
    )
    js = nc.jetstream()
    await bus.ensure_streams(js)

    stop = asyncio.Event()
    scheduler = Scheduler(ctx, js, nc, LeaderLease(store.engine), app)
    # What follows a commit, by the type of each event committed (runyard.server.app.effects).
    app.add_effects(
        effects(
            wake_scheduler=scheduler.wakeup,
            stop_on_agent=scheduler.send_cancel,
            settle_paused=lambda run_id: app.handle(SettlePausedRun(run_id)),
        )
    )
    ctx.queue_explainer = QueueExplainer(scheduling_reads, scheduler.heartbeats.alive, lambda: projections.position)
    ingest = Ingest(app, js, credentials)
    scheduler.accept_heartbeat = AgentAuth(credentials).accept_heartbeat
    # One ingest at a time keeps each run's reports in order: the scheduler's leader's.
    ingest.active = lambda: scheduler.leading
    # Experiments' searchers are fed and obeyed by the leader only, too.
    driver = SearchDriver(store, app, active=lambda: scheduler.leading)

    # Auth runs first (outermost); the edge then checks what an authenticated caller sent (runyard.server.api.edge).
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(credentials), EdgeInterceptor()], options=[("grpc.so_reuseport", 0)]
    )
    watcher = Watcher(store, ctx.queries, head, ctx.queue_explainer)
    experiments = ExperimentService(ctx, app, watcher, storage)
    experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server(experiments, server)
    run_service_pb2_grpc.add_RunServiceServicer_to_server(RunService(ctx, app, watcher), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(ctx, app), server)
    usage_service_pb2_grpc.add_UsageServiceServicer_to_server(UsageService(ctx), server)
    aio_health: Any = getattr(health, "aio")  # noqa: B009 - the async servicer has no type stubs
    health_servicer = aio_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _listen(server, config)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await _report_read_models(projections, health_servicer, loop)
    tasks = [
        asyncio.create_task(scheduler.run(stop), name="scheduler"),
        asyncio.create_task(ingest.run(stop), name="ingest"),
        asyncio.create_task(driver.run(stop), name="experiment-driver"),
    ]
    return Replica(ctx, app, server, port, scheduler, ingest, driver, tasks, stop, nc, health_servicer, unsubscribe)


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run a replica until SIGTERM/SIGINT (or `stop`), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    replica = await start_replica(config)
    host = config.listen.rsplit(":", 1)[0]
    log.info("runyard server listening", endpoint=f"{host}:{replica.port}", database=_safe_url(config.database_url))
    print(f"runyard server listening on {host}:{replica.port}", flush=True)
    await stop.wait()
    log.info("shutting down", grace_s=config.shutdown_grace_s)
    await replica.close(config.shutdown_grace_s)
    log.info("stopped")


def _listen(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Bind the gRPC port: TLS with the configured certificate, plain only where `config.check` allows it."""
    if not config.tls_cert_file or not config.tls_key_file:
        return int(server.add_insecure_port(config.listen))
    try:
        chain = Path(config.tls_cert_file).expanduser().read_bytes()
        key = Path(config.tls_key_file).expanduser().read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the TLS certificate or key ({e.filename}): {e.strerror}") from None
    return int(server.add_secure_port(config.listen, grpc.ssl_server_credentials([(key, chain)])))


READ_MODELS_HEALTH = "runyard.read_models"
"""Health service name that turns NOT_SERVING once a read model skipped an event (the server itself keeps serving)."""


async def _report_read_models(projections: ProjectionRunner, health: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Keep READ_MODELS_HEALTH: NOT_SERVING while any read model has skipped events (`admin info` says which)."""

    async def update() -> None:
        failing = await asyncio.to_thread(projections.failures)
        status = health_pb2.HealthCheckResponse.NOT_SERVING if failing else health_pb2.HealthCheckResponse.SERVING
        await health.set(READ_MODELS_HEALTH, status)

    def on_failure() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is going away
            asyncio.run_coroutine_threadsafe(update(), loop)

    projections.on_failures_changed = on_failure
    await update()


def _safe_url(url: str) -> str:
    """Never log a database password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
