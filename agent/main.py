"""The node agent: registers, heartbeats, pulls work and control, runs attempts.

Wiring only; one attempt's lifecycle is `runyard.agent.worker`.

Work is pulled, never pushed: the agent asks JetStream for one WorkAssignment
only while it has a free slot, with a long-poll fetch that the server answers
the moment work arrives (no polling delay on the submit-to-RUNNING path). A
message is acked as soon as the attempt is accepted; an attempt seen before
(a redelivery after a lost ack) is acked and dropped.

A cancel for an attempt this agent is not running is acked and remembered
(the newest 1000): if that attempt's WorkAssignment is still waiting in the
work stream, because the slots were busy, it is reported RunCanceled when it
arrives instead of being run.

Stopping (the stop event, or SIGTERM/SIGINT when the caller passes none):
fetching stops, the agent registers again with 0 slots (so the scheduler
places nothing more on it, not even the runs it gives back), running commands get SIGTERM then SIGKILL after
``cancel_grace_s``, each unfinished attempt is reported AttemptFailed
AGENT_SHUTDOWN "agent shutting down" (an infrastructure event: the control
plane re-queues it whatever max_restarts says, and does not count it), and
the connection is drained. With the container runtime a stop leaves the
containers running instead (their output read so far is sent and recorded):
the next start adopts them. The wait for those last
reports is bounded (``cancel_grace_s`` + 30 s): with NATS gone for good they
could otherwise be retried forever, and the control plane declares the agent
lost anyway.

Leases (see runyard.server.scheduler.scheduler): each WorkAssignment names its
attempt's lease. The control plane re-queues an attempt once the agent's
heartbeats have not listed it for a lease; so the agent stops an attempt
itself (SIGTERM, SIGKILL after a quarter lease at most; reported failed
INTERNAL once NATS takes reports again) when half its lease has passed since a
heartbeat listing it last reached NATS, and it drops work that waited in the
stream for half its lease or more. A killed agent's runs are ended by their
guards (`runyard.agent.runtime_local`); a restarted one ends what its records
(`runyard.agent.holdings`) say it held, and reports those attempts failed,
before it registers and takes any work.

Adoption (container runtime): a restarted agent lists its containers by the
label ``org.runyard.agent``; each one its holdings record names, with the
attempt's WorkAssignment kept beside it, gets an AttemptWorker again that
follows the output files on from the output ledger (no line lost or repeated),
lists the attempt in its heartbeats (the control plane's lease holds: a
re-registration ends nothing) and reports its end once. Other containers are
removed; recorded attempts without a container are reported failed as
orphans. An attempt the control plane gave up on meanwhile (its lease ended)
is canceled through the control stream, which the restarted agent reads.

GPUs: the host's GPUs come from NVML or a declared inventory (`runyard.agent.gpus`)
and are reported with the registration; each attempt gets exactly the GPUs of
its WorkAssignment through CUDA_VISIBLE_DEVICES (by UUID), and work naming a
GPU that another attempt here still holds waits until that attempt is gone.

Work folders: an attempt that completed or was canceled has its folder
removed at once; the newest ``keep_failed_workdirs`` folders of failed
attempts are kept for a look, older ones are removed (also at start-up,
where every folder left over is from a previous agent process).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from runyard import bus, natsauth
from runyard.agent.config import AgentConfig
from runyard.agent.gpus import detect_gpus, gpu_model_label
from runyard.agent.holdings import HeldAttempt, Holdings
from runyard.agent.offers import process_offers
from runyard.agent.reporter import Reporter
from runyard.agent.runtime_container import ContainerError, ContainerRuntime, HeldContainer, check_gpu_support
from runyard.agent.sandbox import Bwrap, SandboxMode, probe
from runyard.agent.staging import prune_work_dirs
from runyard.agent.worker import DEFAULT_LEASE_S, AttemptWorker, Outcome, WorkerContext
from runyard.objectstore import open_store
from runyard.v1.agent_pb2 import AgentControl, AgentHeartbeat, WorkAssignment
from runyard.v1.common_pb2 import FailureReason, Framework
from runyard.v1.events_pb2 import AgentRegistered

log = structlog.get_logger("runyard.agent")

# Long-poll length of one fetch; a new message ends it at once. Short enough
# that a pull request lost in a NATS reconnect is replaced within seconds.
FETCH_POLL_S = 5.0
# A WorkAssignment not acked within this is redelivered (agent died between fetch and ack).
WORK_ACK_WAIT_S = 30.0
_REMEMBERED = 1000
# How long a stopping agent waits (beyond the cancel grace) for its attempts' last reports.
SHUTDOWN_REPORT_WAIT_S = 30.0
# Longest wait for the registration with 0 slots that a stopping agent sends first.
CLOSING_REPORT_WAIT_S = 5.0
# Longest wait for the NATS connection to drain on the way out.
DRAIN_TIMEOUT_S = 2.0
# A PING not answered within this long counts as never answered (see Agent._check_contact).
CONTACT_CHECK_GIVE_UP_S = 120
# Contact confirmed again after a gap this long: the registration is sent again (we may have been declared lost).
REREGISTER_AFTER_GAP_S = 10.0
# Work naming a GPU that a finishing attempt still holds comes back after this long.
GPU_BUSY_RETRY_S = 0.5
RUNTIMES = ("process", "container")

T = TypeVar("T")
Key = tuple[str, int]


def configure_logging() -> None:
    """JSON lines on stderr, unless the embedding process configured structlog already."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class _Remembered:
    """A bounded set of attempt keys, oldest forgotten first."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self._keys: OrderedDict[Key, None] = OrderedDict()
        self._size = size

    def add(self, key: Key) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        bus.check_agent_id(config.agent_id)
        self.gpus = list(config.gpus) if config.gpus is not None else detect_gpus()
        # With GPUs a slot per GPU by default: a one-GPU run on each.
        self.slots = config.slots if config.slots is not None else max(1, len(self.gpus))
        if self.slots < 1:
            raise ValueError(f"agent slots must be at least 1, got {self.slots}")
        self.labels = dict(config.labels)
        if self.gpus:
            # Manifests can ask for a model through the label too (resources.labels: {gpu_model: H100}).
            self.labels.setdefault("gpu_model", gpu_model_label(self.gpus))
        self.config = config
        if config.runtime not in RUNTIMES:
            raise ValueError(f"agent runtime must be one of {', '.join(RUNTIMES)}, got {config.runtime!r}")
        try:
            self.sandbox_mode = SandboxMode(config.sandbox)
        except ValueError:
            modes = ", ".join(m.value for m in SandboxMode)
            raise ValueError(f"agent sandbox must be one of {modes}, not {config.sandbox!r}") from None
        self.sandbox: Bwrap | None = None
        self.offers = process_offers(config.frameworks)
        self.frameworks = self.offers.interpreters
        # Set in run() for --runtime container: the engine is dialled there, not in the constructor.
        self.containers: ContainerRuntime | None = None
        self.work_root = Path(config.work_dir).resolve()
        self.store = open_store(config.storage_root, config.s3_endpoint_url)
        self.workers: dict[Key, AttemptWorker] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seen = _Remembered()
        self._canceled_early = _Remembered()
        self._free_slots = self.slots
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._log = log.bind(agent_id=config.agent_id)
        self._reporter: Reporter | None = None
        self.holdings = Holdings(self.work_root)
        # Attempts a previous agent process held (its records), ended before any work is taken.
        self._orphans: list[HeldAttempt] = []
        # Containers of a previous agent process to adopt (container runtime), found before connecting.
        self._adoptable: dict[Key, tuple[WorkAssignment, HeldContainer]] = {}
        # Why an orphan ended, where it is not the default (a container left unvouched too long).
        self._orphan_messages: dict[Key, str] = {}
        # The PING that checks our contact with NATS now, and the connection (its reconnect count) it went on.
        self._contact_check: tuple[asyncio.Task[None], int] | None = None
        self._last_contact = 0.0

    @property
    def reporter(self) -> Reporter:
        if self._reporter is None:
            raise RuntimeError("agent not connected")
        return self._reporter

    # -- entry ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if self.config.runtime == "container":
            self.containers = await asyncio.to_thread(self._container_runtime)
            # Containers a previous agent process left running are adopted; what cannot be, removed.
            self._adoptable = await asyncio.to_thread(self._find_adoptable, self.containers)
        else:
            self.sandbox = await asyncio.to_thread(self._probe_sandbox)
        # Orphans of a killed agent process are ended first, with or without NATS.
        self._orphans = await asyncio.to_thread(self._end_orphans)
        connect = asyncio.create_task(self._connect())
        if not await self._until_stop(connect, stop):
            self._log.info("stopped before NATS was reachable")
            return
        nc = connect.result()
        try:
            js = nc.jetstream()
            # An agent with its own NATS user may not create streams: the control plane does.
            if not self.config.nats_nkey_file:
                try:
                    await bus.ensure_streams(js)
                except Exception as e:
                    raise RuntimeError(
                        f"cannot set up the JetStream streams at {self.config.nats_url} ({e!r}): "
                        "is nats-server running with JetStream enabled (-js)?"
                    ) from e
            self._reporter = Reporter(nc, js, self.config.agent_id, api_key=self.config.api_key)
            if not self.config.api_key:
                self._log.warning("no API key (--api-key, RUNYARD_API_KEY): the control plane will refuse our reports")
            self.ctx = WorkerContext(
                agent_id=self.config.agent_id,
                store=self.store,
                reporter=self.reporter,
                work_root=self.work_root,
                frameworks=self.frameworks,
                cancel_grace_s=self.config.cancel_grace_s,
                checkpoint_interval_s=self.config.checkpoint_interval_s,
                sandbox=self.sandbox,
                code_limits=(self.config.max_code_extract_bytes, self.config.max_code_files),
                holdings=self.holdings,
                containers=self.containers,
            )
            self.work_root.mkdir(parents=True, exist_ok=True)
            self._adopt()  # before the prune (their folders are kept) and the first heartbeat (it lists them)
            await asyncio.to_thread(self._prune)
            await self._report_orphans()
            await self.reporter.registered(self._registration())
            work_sub = await self._pull(js, bus.WORK_STREAM, bus.work_subject(self.config.agent_id))
            control_sub = await self._pull(js, bus.CONTROL_STREAM, bus.control_subject(self.config.agent_id))
            self._log.info(
                "agent ready",
                slots=self.slots,
                gpus=[f"{g.index}:{g.model}:{g.uuid}" for g in self.gpus],
                frameworks=[f"{f.name} {f.version}".strip() for f in self._frameworks()],
                runtime=self.config.runtime,
            )

            work = asyncio.create_task(self._work_loop(work_sub), name="agent-work")
            control = asyncio.create_task(self._control_loop(control_sub), name="agent-control")
            heartbeat = asyncio.create_task(self._heartbeat_loop(nc), name="agent-heartbeat")
            stopped = asyncio.create_task(stop.wait())
            loops = {stopped, work, control, heartbeat}
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            self._stop.set()
            stopped.cancel()
            await self._shutdown(work, control, heartbeat)
            for task in done:  # a loop that died is a bug worth surfacing
                if task is not stopped and not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc
        finally:
            # Every report was acked by now. A fetch cancelled while its message was arriving
            # leaves that message in the subscription's queue, and a drain would wait its full
            # timeout (30 s) for it: bound the drain, then close.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await nc.close()
            if self._contact_check is not None:
                self._contact_check[0].cancel()
            self._log.info("agent stopped")

    def _container_runtime(self) -> ContainerRuntime:
        """The engine (checked with a ping), the init shim in place."""
        from runyard.agent.engine import connect

        runtime = ContainerRuntime(
            connect(self.config.engine_url),
            self.config.agent_id,
            self.work_root,
            # Declared GPUs (--gpus) have made-up UUIDs: no device to attach behind them.
            attach_gpus=self.config.gpus is None,
        )
        if self.gpus and runtime.attach_gpus:
            try:
                check_gpu_support(runtime.engine, runtime.engine_version, [g.uuid for g in self.gpus])
            except ContainerError as e:
                self._log.error("runs with GPUs will be refused", error=str(e))
        runtime.install_shim()
        self._log.info(
            "container runtime",
            engine=runtime.engine,
            engine_url=self.config.engine_url,
            images=[f"{i.name} {i.version}" for i in runtime.images(refresh=True)],
        )
        return runtime

    def _frameworks(self) -> list[Framework]:
        """What runs may ask for here: the framework images held (containers), or the interpreters (processes)."""
        if self.containers is not None:
            return [Framework(name=i.name, version=i.version, digest=i.digest) for i in self.containers.images()]
        return self.offers.frameworks()

    def _find_adoptable(self, runtime: ContainerRuntime) -> dict[Key, tuple[WorkAssignment, HeldContainer]]:
        """This agent's containers that a previous agent process started and its records know; the rest removed.

        Adoptable: the holdings record names the container (written once its
        start was reported), the attempt's WorkAssignment was kept, and the
        control plane heard of the attempt (the last heartbeat PONG noted in
        the holdings) less than half its lease ago. Any other container is
        stopped and removed; its attempt, if recorded, is reported as an orphan.
        """
        records = {(h.run_id, h.attempt): h for h in self.holdings.load()}
        adoptable: dict[Key, tuple[WorkAssignment, HeldContainer]] = {}
        contact = self.holdings.last_contact()
        for held in runtime.held_containers():
            key = (held.run_id, held.attempt)
            record = records.get(key)
            work = self.holdings.load_work(*key) if record is not None and record.container == held.id else None
            if work is None or key in adoptable:
                runtime.remove(held.id)
                self._log.warning(
                    "removed a container no record of ours names", container=held.name, run_id=key[0], attempt=key[1]
                )
                continue
            # The agent's own rule (see Leases): unvouched for half its lease, an attempt is stopped. The
            # control plane may have ended it meanwhile and given the run to another agent: never adopt it.
            lease_s = float(work.lease_seconds) if work.lease_seconds else DEFAULT_LEASE_S
            away = time.time() - max(contact, self.holdings.recorded_at(*key))
            if away >= lease_s / 2:
                runtime.remove(held.id)
                self._orphan_messages[key] = (
                    f"the agent was away {away:.0f}s, past half the attempt's lease ({lease_s:.0f}s): "
                    "its container was stopped"
                )
                self._log.warning("stopped a container left unvouched too long", container=held.name, away_s=away)
                continue
            adoptable[key] = (work, held)
        return adoptable

    def _adopt(self) -> None:
        """A worker for each adoptable container: it follows the output on and reports the end."""
        assert self.containers is not None or not self._adoptable
        for key, (work, held) in self._adoptable.items():
            assert self.containers is not None
            worker = AttemptWorker(self.ctx, work)
            worker.adopt(self.containers.reattach(held, worker.dirs.output))
            self.workers[key] = worker
            self._seen.add(key)
            self._free_slots -= 1
            self._log.info("adopted a container of a previous agent process", run_id=key[0], attempt=key[1])
            self._spawn(self._run_worker(worker))
        self._adoptable = {}

    def _probe_sandbox(self) -> Bwrap | None:
        """bwrap, when it works here (see runyard.agent.sandbox); raises SandboxError for --sandbox bwrap without it."""
        hidden = [str(self.work_root), str(Path.home())]
        hidden += [str(Path(f).resolve().parent) for f in (self.config.nats_nkey_file, self.config.nats_ca_file) if f]
        if self.config.storage_root and self.config.storage_root.startswith("file://"):
            hidden.append(urllib.parse.urlparse(self.config.storage_root).path)
        sandbox, why = probe(self.sandbox_mode, self.frameworks.values(), hidden)
        if sandbox is None and self.sandbox_mode is SandboxMode.AUTO:
            self._log.warning("sandbox", detail=why)
        else:
            self._log.info("sandbox", detail=why)
        return sandbox

    def _end_orphans(self) -> list[HeldAttempt]:
        """End the attempts a previous agent process left behind (see runyard.agent.holdings)."""
        orphans = [h for h in self.holdings.load() if (h.run_id, h.attempt) not in self._adoptable]
        alive = self.holdings.end_orphans(orphans, self.config.cancel_grace_s)
        for held in orphans:
            self._seen.add((held.run_id, held.attempt))  # a redelivery of its work is not run again
            self._log.warning(
                "ended an attempt left by a previous agent process",
                run_id=held.run_id,
                attempt=held.attempt,
                pgid=held.pgid,
                was_running=held in alive,
            )
        return orphans

    async def _report_orphans(self) -> None:
        """Report each orphan's end (INTERNAL: re-queued while restarts remain), then forget its record."""
        for held in self._orphans:
            reports = self.reporter.for_attempt(held.run_id, held.attempt)
            message = self._orphan_messages.pop(
                (held.run_id, held.attempt), "the agent restarted; the attempt's processes were ended"
            )
            await reports.failed(FailureReason.FAILURE_REASON_INTERNAL, message)
            await asyncio.to_thread(self.holdings.remove, held.run_id, held.attempt)
        self._orphans = []

    async def _connect(self) -> Any:
        async def on_error(e: Exception) -> None:
            self._log.warning("nats error", error=repr(e))

        async def on_disconnected() -> None:
            self._log.warning("nats disconnected", url=self.config.nats_url)

        async def on_reconnected() -> None:
            self._log.info("nats reconnected")
            if self._reporter is not None:  # refresh the control plane's view of this agent
                self._spawn(self._reporter.registered(self._registration()))

        return await nats.connect(
            servers=[self.config.nats_url],
            name=f"runyard-agent-{self.config.agent_id}",
            # Replies come to this agent's own inbox prefix: with NATS users it may subscribe nowhere else.
            inbox_prefix=natsauth.agent_inbox_prefix(self.config.agent_id),
            **natsauth.connect_options(self.config.nats_url, self.config.nats_nkey_file, self.config.nats_ca_file),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )

    async def _pull(self, js: Any, stream: str, subject: str) -> Any:
        durable = bus.agent_durable(self.config.agent_id)
        config = ConsumerConfig(
            # Named: created through $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>, the one subject
            # an agent's NATS user may use to make a consumer (the server checks the filter against it).
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=WORK_ACK_WAIT_S,
            filter_subject=subject,
        )
        return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)

    def _registration(self) -> AgentRegistered:
        return AgentRegistered(
            agent_id=self.config.agent_id,
            hostname=socket.gethostname(),
            # A stopping agent takes no more work: the scheduler places nothing on 0 slots.
            slots=0 if self._stop.is_set() else self.slots,
            # Runs get GPUs by UUID (see runyard.agent.gpus): these ids end up in CUDA_VISIBLE_DEVICES.
            gpu_ids=[g.uuid for g in self.gpus],
            labels=self.labels,
            frameworks=self._frameworks(),
            gpus=[g.to_proto() for g in self.gpus],
            runtime=self.config.runtime,
        )

    # -- loops ----------------------------------------------------------------

    async def _until_stop(self, task: asyncio.Task[T], stop: asyncio.Event | None = None) -> bool:
        """Wait for task or the stop event; True when the task finished first (its result is ready)."""
        stopped = asyncio.create_task((stop or self._stop).wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopped.cancel()
        if task.done():
            return True
        # nats-py's connect loop can swallow one cancellation while it tears down a failed try.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()
        return False

    async def _next_msg(self, sub: Any) -> Any | None:
        """Long-poll one message; None once stopping."""
        backoff = 0.1
        while not self._stop.is_set():
            fetch = asyncio.create_task(sub.fetch(1, timeout=FETCH_POLL_S))
            if not await self._until_stop(fetch):
                return None
            try:
                return fetch.result()[0]
            except (TimeoutError, nats.errors.TimeoutError):
                backoff = 0.1
            except Exception as e:  # NATS reconnecting, JetStream briefly unavailable
                self._log.warning("fetch failed, retrying", error=repr(e), retry_in_s=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _work_loop(self, sub: Any) -> None:
        while not self._stop.is_set():
            while self._free_slots <= 0:  # below 0: more adopted containers than slots
                self._slot_freed.clear()
                if not await self._until_stop(asyncio.create_task(self._slot_freed.wait())):
                    return
            msg = await self._next_msg(sub)
            if msg is None:
                return
            try:
                await self._accept(msg)
            except Exception:  # one bad message must not stop the agent taking work
                self._log.exception("accepting work failed")

    async def _accept(self, msg: Any) -> None:
        try:
            work = WorkAssignment.FromString(msg.data)
        except Exception as e:
            self._log.error("unreadable work message dropped", error=repr(e))
            await msg.term()
            return
        key = (work.run_id, work.attempt)
        if key in self.workers or key in self._seen:
            self._log.info("work for an attempt already taken; dropped", run_id=key[0], attempt=key[1])
            await msg.ack()
            return
        if key in self._canceled_early:
            await msg.ack()
            self._seen.add(key)
            self._spawn(self.reporter.for_attempt(*key).canceled("canceled before the agent picked it up"))
            return
        if self._stop.is_set():
            await msg.nak()
            return
        waited = _age_s(msg)
        lease_s = float(work.lease_seconds) if work.lease_seconds else DEFAULT_LEASE_S
        if waited >= lease_s / 2:
            # The control plane may give the run to another agent once the lease ends: too late to start.
            self._log.warning(
                "work waited too long in the stream; dropped", run_id=key[0], attempt=key[1], waited_s=waited
            )
            await msg.ack()
            self._seen.add(key)
            return
        unknown = [g for g in work.gpu_ids if g not in {gpu.uuid for gpu in self.gpus}]
        if unknown:
            self._log.error("work names GPUs this agent does not have", run_id=key[0], gpus=unknown)
            await msg.ack()
            self._seen.add(key)
            self._spawn(self._refuse(work, f"GPU(s) {', '.join(unknown)} are not on agent {self.config.agent_id}"))
            return
        held = {g for w in self.workers.values() for g in w.work.gpu_ids} & set(work.gpu_ids)
        if held:
            # The previous holder reported its end but is still finishing here: never share a
            # GPU, take the work again once it is gone.
            self._log.info("GPUs still held by a finishing attempt; retrying", run_id=key[0], gpus=sorted(held))
            await msg.nak(delay=GPU_BUSY_RETRY_S)
            return
        try:
            worker = AttemptWorker(self.ctx, work)
        except Exception as e:  # e.g. a run id that cannot name a folder
            self._log.error("work refused", run_id=work.run_id, error=str(e))
            await msg.ack()
            self._seen.add(key)
            self._spawn(self._refuse(work, str(e)))
            return
        worker.vouched_at = time.monotonic() - waited
        await asyncio.to_thread(self.holdings.record, HeldAttempt(*key))
        if self.containers is not None:  # what a restarted agent needs to adopt the attempt's container
            await asyncio.to_thread(self.holdings.record_work, work)
        self.workers[key] = worker
        self._seen.add(key)
        self._free_slots -= 1
        self._spawn(self._run_worker(worker))
        await msg.ack()

    async def _refuse(self, work: WorkAssignment, message: str) -> None:
        reports = self.reporter.for_attempt(work.run_id, work.attempt)
        await reports.failed(FailureReason.FAILURE_REASON_INTERNAL, message)

    async def _run_worker(self, worker: AttemptWorker) -> None:
        outcome = Outcome.FAILED
        try:
            outcome = await worker.run()
        except Exception:
            self._log.exception("attempt lost", run_id=worker.key[0], attempt=worker.key[1])
        finally:
            self.workers.pop(worker.key, None)
            self._free_slots += 1
            self._slot_freed.set()
            if outcome is not Outcome.DETACHED:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.holdings.remove, *worker.key)
        if outcome is Outcome.DETACHED:  # the next agent process adopts it: records and folder stay
            return
        try:
            if outcome is Outcome.FAILED:
                await asyncio.to_thread(self._prune)
            else:
                await asyncio.to_thread(worker.remove_work_dir)
        except OSError as e:
            self._log.warning("work folder cleanup failed", error=repr(e))

    def _prune(self) -> None:
        active = {w.dirs.root for w in self.workers.values()}
        for path in prune_work_dirs(self.work_root, self.config.keep_failed_workdirs, active):
            self._log.info("removed old work folder", path=str(path))

    async def _control_loop(self, sub: Any) -> None:
        while (msg := await self._next_msg(sub)) is not None:
            try:
                await self._control(msg)
            except Exception:
                self._log.exception("control message failed")

    async def _control(self, msg: Any) -> None:
        try:
            control = AgentControl.FromString(msg.data)
        except Exception as e:
            self._log.error("unreadable control message dropped", error=repr(e))
            await msg.term()
            return
        if control.HasField("cancel"):
            c = control.cancel
            key = (c.run_id, c.attempt)
            worker = self.workers.get(key)
            if worker is not None:
                self._log.info("cancel", run_id=c.run_id, attempt=c.attempt, grace_s=c.grace_seconds)
                worker.cancel(float(c.grace_seconds) if c.grace_seconds else None)
            else:
                self._log.info("cancel for an attempt not here", run_id=c.run_id, attempt=c.attempt)
                if key not in self._seen:
                    self._canceled_early.add(key)
        await msg.ack()

    async def _heartbeat_loop(self, nc: Any) -> None:
        subject = bus.heartbeat_subject(self.config.agent_id)
        while not self._stop.is_set():
            listed = list(self.workers)
            # Several heartbeats per half lease, however short the lease.
            interval = min([self.config.heartbeat_s, *(self.workers[k].lease_s / 8 for k in listed)])
            beat = AgentHeartbeat(
                agent_id=self.config.agent_id,
                attempts=[f"{run_id}:{attempt}" for run_id, attempt in listed],
                time_us=_now_us(),
            )
            try:
                # With the agent key: the control plane counts a heartbeat only from a key bound to this agent.
                await nc.publish(subject, beat.SerializeToString(), headers=self.reporter.auth_headers or None)
                self._check_contact(nc, listed)
            except Exception as e:
                self._log.warning("heartbeat not sent", error=repr(e))
            self._stop_out_of_contact()
            await self._sleep(interval)

    def _check_contact(self, nc: Any, listed: list[Key]) -> None:
        """Renew the listed attempts' leases once NATS answers a PING sent after this heartbeat.

        One check at a time. nats-py fails a flush that times out by cancelling its PONG future,
        and a PONG arriving after that breaks its read loop; so a check is never cut short here:
        it is left to finish (or to be dropped with the connection, which discards pending PONGs).
        """
        reconnects = int(nc.stats.get("reconnects", 0))
        current = self._contact_check
        if current is not None and not current[0].done() and current[1] == reconnects:
            return  # the last PING is still on its way
        sent = time.monotonic()
        sent_wall = time.time()

        def answered(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is not None:
                return
            # A flush while reconnecting returns at once: only a PONG on the same connection counts.
            if not nc.is_connected or int(nc.stats.get("reconnects", 0)) != reconnects:
                return
            for key in listed:
                if (worker := self.workers.get(key)) is not None:
                    worker.vouched_at = max(worker.vouched_at, sent)
            if self.containers is not None and listed:  # for a restarted agent: how long its containers went unvouched
                self._spawn(asyncio.to_thread(self.holdings.note_contact, sent_wall))
            if self._last_contact and sent - self._last_contact > REREGISTER_AFTER_GAP_S and self._reporter:
                # Silent that long, the control plane may have declared us lost: tell it we are back.
                self._spawn(self._reporter.registered(self._registration()))
            self._last_contact = max(self._last_contact, sent)

        check = asyncio.create_task(nc.flush(timeout=CONTACT_CHECK_GIVE_UP_S))
        check.add_done_callback(answered)
        self._contact_check = (check, reconnects)

    def _stop_out_of_contact(self) -> None:
        """Stop every attempt whose lease may end before we can tell the control plane we hold it."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            silent = now - worker.vouched_at
            if worker.stopping or silent < worker.self_stop_after_s:
                continue
            message = (
                f"no contact with the control plane for {silent:.0f}s (lease {worker.lease_s:.0f}s): "
                "the agent stopped the attempt"
            )
            self._log.warning("stopping an attempt out of contact", run_id=worker.key[0], attempt=worker.key[1])
            worker.shutdown(message, worker.kill_grace_s, FailureReason.FAILURE_REASON_INTERNAL)

    # -- shutdown -------------------------------------------------------------

    async def _shutdown(self, *loops: asyncio.Task[None]) -> None:
        self._log.info("stopping", attempts=[f"{r}:{a}" for r, a in self.workers])
        # Registered again with 0 slots before the attempts end: the runs they give back are not
        # placed on this agent again while the control plane still counts it alive.
        try:
            await asyncio.wait_for(self.reporter.registered(self._registration()), CLOSING_REPORT_WAIT_S)
        except Exception as e:
            self._log.warning("could not announce the shutdown", error=repr(e))
        for worker in list(self.workers.values()):
            if self.containers is not None:
                worker.detach()  # its container runs on; the next agent process adopts it
            else:
                worker.shutdown()
        for task in loops:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Bounded: with NATS gone for good the last reports would be retried forever.
        deadline = asyncio.get_running_loop().time() + self.config.cancel_grace_s + SHUTDOWN_REPORT_WAIT_S
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            _done, pending = await asyncio.wait(set(self._tasks), timeout=max(left, 0.0))
            if pending and left <= 0:
                self._log.error("gave up waiting for attempts to report", tasks=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                self._log.exception("background task failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _age_s(msg: Any) -> float:
    """How long a JetStream message waited since it was stored (0 when it cannot tell)."""
    try:
        stored: datetime = msg.metadata.timestamp
        return max(0.0, (datetime.now(UTC) - stored).total_seconds())
    except Exception:
        return 0.0


def _now_us() -> int:
    return time.time_ns() // 1000


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run one agent until stop is set (or SIGTERM/SIGINT when stop is None)."""
    configure_logging()
    agent = Agent(config)
    handled: list[signal.Signals] = []
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
    try:
        await agent.run(stop)
    finally:
        loop = asyncio.get_running_loop()
        for sig in handled:
            loop.remove_signal_handler(sig)
