"""The scheduling loop: one leader admits, places and dispatches; every replica listens.

Every replica runs this loop, but only the holder of the PostgreSQL advisory
lock (`LeaderLease`) acts; the others retry for the lock every half second,
so when the leader dies (its connection closes and the lock goes with it)
another takes over within about a second. A new leader first re-sends the
work and cancels its predecessor may have lost.

A cycle: read one snapshot of the read models (each account's first
`CYCLE_WINDOW_PER_ACCOUNT` queued runs) with the run transitions logged since
their position laid over it, so capacity given away by the last cycle, or
freed since, is seen without waiting for the next projection batch (when
anything else is in between, new runs or agents, the read models are caught
up first); declare silent agents lost and end attempts whose lease ran out (see Liveness),
ask the pure policy
(`runyard.server.domain.scheduling`), then append RunAssigned for each
placement and publish its WorkAssignment on the agent's JetStream subject.
Cycles are spaced by at least half their own duration, so with a long queue
the scheduler never takes the CPU from ingest and the read models.

Never twice. A RunAssigned is appended against the run stream's version and
only while the run is QUEUED, so a second (deposed) leader's assignment of
the same run fails; every RunAssigned starts a new attempt, and agents'
reports of any other attempt are refused (attempt fencing).

Lost dispatch. A WorkAssignment can be lost between the append and the
publish (the leader died) or on the way. While a run is ASSIGNED the leader
watches its agent's heartbeats, which list the attempts the agent holds; when
they have not listed it for `REDISPATCH_AFTER_S`, the work is sent again
(the agent drops a copy of an attempt it already has).

Liveness: leases. Every attempt that holds slots (ASSIGNED, STAGING, RUNNING,
UPLOADING) has a lease of `attempt_lease_s`, renewed by each heartbeat of its
agent that lists it (and by each dispatch of its work). An attempt whose lease
ends without its end being reported is ended as AGENT_LOST: re-queued while
restarts remain. The lease is never counted across a gap in our own hearing:
it starts again from when this replica began to lead and from when its NATS
connection came back. The agent keeps its side of the bargain
(`runyard.agent.main`): it stops an attempt itself after half the lease without
contact (SIGTERM, SIGKILL a quarter lease later at most), drops work that
waited longer than that, and kills the attempt's process group at once when
the agent itself dies; so by the time a lease ends, the old attempt is dead,
and a run is never started again while an earlier attempt may still be alive.
An agent silent for `agent_timeout_s` is declared lost at once (AgentLost: it
gets no new work), but the attempts it held end only with their leases.

Preemption. In a cycle that placed nothing, each account's first run left
waiting for capacity (the one holding a reservation) that has waited
`preemption_wait_s` may take GPUs from running runs (`runyard.server.domain.preemption`:
fair share across accounts, priority within one). The victims get
RunPreemptRequested (PreemptRun); its effect sends their agents a cancel with
the run's grace; the agents report the stop as canceled and the Run aggregate
re-queues them, PREEMPTED and uncharged. The taker then reserves the victims'
agent (`_promised`), so the GPUs they free are kept for it, and nothing more is
preempted while any victim is still stopping.

Woken by commits to the log that may change a decision, by an agent's first
heartbeat, or by a one-second tick. This replica's own commits wake it through
the application's bus, by the type of each committed event
(`runyard.server.app.effects`): a run's log lines and metric points, and the
steps that keep its GPUs held, wake nothing. Others' commits wake it through
PostgreSQL NOTIFY (`commit_is_heard`), but not the NOTIFY echoes of this
replica's own. A cycle catches the read models up only when the log has grown
past them, and its own assignments do not wake the next one unless the policy
may have more to place.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from runyard import bus
from runyard.server.app.aggregates import RUN
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import AssignRun, AssignRuns, DeclareAgentLost, ExpireAttempt, PreemptRun
from runyard.server.app.effects import DEFAULT_PREEMPTION_GRACE_S
from runyard.server.app.unit_of_work import Outcome
from runyard.server.context import ServerContext
from runyard.server.domain.errors import DomainError
from runyard.server.domain.events import decode
from runyard.server.domain.preemption import RunningRun, choose_victims
from runyard.server.domain.scheduling import Decision, Placement, schedule
from runyard.server.queries.scheduling import OVERLAY_TYPES, Holding, SchedulingReads, Snapshot, overlay
from runyard.server.scheduler.heartbeats import Heartbeats
from runyard.server.scheduler.leader import LeaderLease
from runyard.server.store import ConcurrencyError
from runyard.server.store.notify import commit_is_echo, commit_is_heard
from runyard.v1 import agent_pb2, common_pb2, events_pb2

log = structlog.get_logger(__name__)

# A run ASSIGNED this long without its agent's heartbeats listing the attempt is dispatched again.
REDISPATCH_AFTER_S = 6.0
# SIGTERM-to-SIGKILL seconds of a graceful stop (pause, preemption) when the run's spec names none.
DEFAULT_STOP_GRACE_S = 60
# Heartbeats sent this soon after a dispatch may predate the agent taking the work.
HEARTBEAT_GRACE_S = 2.5
# Replicas that do not lead try for the lock this often; the leader checks it still holds it as often.
FOLLOWER_RETRY_S = 0.5
LEASE_CHECK_S = 0.5
# Cycles follow each other no faster than this, however often commits wake the loop...
MIN_CYCLE_GAP_S = 0.005
# ...and with at least this many times the last cycle's own duration between them, so a long
# queue (a cycle reads and weighs all of it) never starves ingest and the read models of the CPU.
CYCLE_GAP_FACTOR = 0.5
# A placement cycle weighs at most this many queued runs of each account (its queue's head).
# Runs further back wait for the next cycles; `show`/`list` still explain the whole queue.
CYCLE_WINDOW_PER_ACCOUNT = 1000
# The leader reuses its last (overlaid) snapshot for this long, then reads the read models afresh.
SNAPSHOT_REUSE_S = 1.0
# A cycle lays at most this many run transitions over the read models (`_overlaid`); more: it catches them up.
OVERLAY_LIMIT = 500
# Events the read models must show before a cycle may rely on them: re-queues and resumes, agents, plans. (New
# runs are laid over the snapshot from their RunCreated, so a submit does not wait for the read models.)
_NEEDS_READ_MODELS = frozenset(
    t.DESCRIPTOR.full_name
    for t in (
        events_pb2.RunRequeued,
        events_pb2.RunResumed,
        events_pb2.AgentRegistered,
        events_pb2.AgentLost,
        events_pb2.AgentDrainRequested,
        events_pb2.AgentDrainCleared,
        events_pb2.AccountCreated,
        events_pb2.AccountQuotaSet,
        events_pb2.AccountPreemptionSet,
        events_pb2.ExperimentPrioritySet,
    )
)
_OVERLAY_READ = sorted(_NEEDS_READ_MODELS | {t.DESCRIPTOR.full_name for t in OVERLAY_TYPES})
# While leading, the decision figures are logged this often (and when the replica stops).
STATS_EVERY_S = 10.0


def _window_cut(snapshot: Snapshot) -> bool:
    """Did some account's queue reach the cycle's window (runs behind it are not in the snapshot)?"""
    per_account: dict[str, int] = {}
    for q in snapshot.queue:
        per_account[q.account_id] = per_account.get(q.account_id, 0) + 1
    return any(n >= CYCLE_WINDOW_PER_ACCOUNT for n in per_account.values())


def running_runs(holding: Sequence[Holding]) -> list[RunningRun]:
    """The runs holding GPUs, as the preemption policy weighs them."""
    return [
        RunningRun(
            h.run_id,
            h.account_id,
            h.agent_id,
            h.gpu_ids,
            priority=h.priority,
            not_preemptible=h.not_preemptible,
            started_position=h.assigned_position,
            stopping=h.cancel_requested or h.preempt_requested,
            preempted=h.preempt_requested,
        )
        for h in holding
        if h.gpu_ids
    ]


def _queued_gpus(snapshot: Snapshot) -> dict[str, int]:
    wanted: dict[str, int] = {}
    for q in snapshot.queue:
        wanted[q.account_id] = wanted.get(q.account_id, 0) + q.gpus
    return wanted


class Scheduler:
    def __init__(self, ctx: ServerContext, js: Any, nc: Any, lease: LeaderLease, bus: MessageBus) -> None:
        self._ctx = ctx
        self._bus = bus
        self._js = js
        self._nc = nc
        self._lease = lease
        self.heartbeats = Heartbeats(ctx.config.agent_timeout_s)
        #: Whether a heartbeat is its agent's own (its key and subject; set by the composition root).
        self.accept_heartbeat: Callable[[Any, agent_pb2.AgentHeartbeat], Awaitable[bool]] | None = None
        self.reads = SchedulingReads(ctx.store.engine)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # The highest log position any commit callback told of: the read models must reach it
        # before a cycle reads them (0: not known yet, always catch up).
        self._head = 0
        self._head_guard = threading.Lock()
        #: The last cycle's snapshot and the log position it is good to (leader only; see `_overlaid`).
        self._cached: tuple[int, Snapshot] | None = None
        # Specs of runs a cycle learned of from their RunCreated (`_overlaid`), before the read models show them.
        self._created_specs: dict[str, tuple[str, common_pb2.RunSpec]] = {}
        self._cached_at = 0.0
        self.leading = False
        self._last_try = 0.0
        # (run id, attempt) -> (monotonic time of the last dispatch, dispatches so far)
        self._dispatched: dict[tuple[str, int], tuple[float, int]] = {}
        #: Queued runs the policy looked at, the seconds it took over all cycles, runs assigned.
        self.decisions = 0
        self.decision_seconds = 0.0
        self.cycles = 0
        self.slowest_decision_s = 0.0
        self.assigned = 0
        #: Seconds spent reading the snapshot (read models caught up first) and assigning + dispatching.
        self.read_seconds = 0.0
        self.catch_up_seconds = 0.0
        self.assign_seconds = 0.0
        self._stats_at = time.monotonic()
        self._lease_s = float(ctx.config.attempt_lease_s)
        # (run id, attempt) -> monotonic time its work was last sent, kept while the attempt holds slots.
        self._sent_at: dict[tuple[str, int], float] = {}
        # When this replica last became the leader: no lease ends before it has listened a whole lease.
        self._leading_since = time.monotonic()
        # Agents declared lost (AgentLost appended) and not heard from since.
        self._declared_lost: set[str] = set()
        self._nats_reconnects = 0
        #: Waiting run -> the agent whose runs were preempted for it: it reserves that agent (see `_preempt`).
        self._promised: dict[str, str] = {}
        #: Reserved (capacity-blocked) run -> monotonic time this leader first saw it so.
        self._blocked_since: dict[str, float] = {}
        #: Runs preempted by this replica's cycles (for the figures).
        self.preempted = 0

    def wakeup(self) -> None:
        self._wake.set()

    def wakeup_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self._wake.set)

    def _on_commit(self, position: int) -> None:
        with self._head_guard:
            self._head = max(self._head, position)
        if not commit_is_heard() or commit_is_echo():
            return  # this replica's own commit: the bus woke us if its events may change a decision
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        sub = await self._nc.subscribe(bus.HEARTBEAT_WILDCARD, cb=self._on_heartbeat)
        unsubscribe = self._ctx.store.on_commit(self._on_commit)
        try:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await self._cycle()
                except Exception:
                    log.exception("scheduling cycle failed")
                ended = time.perf_counter()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                # Woken long after the last cycle: go at once; right after it: let wake-ups gather.
                gap = max(MIN_CYCLE_GAP_S, CYCLE_GAP_FACTOR * (ended - started))
                await asyncio.sleep(max(0.0, ended + gap - time.perf_counter()))
                self._wake.clear()
        finally:
            self._log_stats()
            unsubscribe()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await asyncio.to_thread(self._lease.release)

    async def _on_heartbeat(self, msg: Any) -> None:
        beat = agent_pb2.AgentHeartbeat()
        try:
            beat.ParseFromString(msg.data)
        except Exception:
            return
        if self.accept_heartbeat is not None and not await self.accept_heartbeat(msg, beat):
            return
        if self.heartbeats.record(beat):
            self._declared_lost.discard(beat.agent_id)
            self._wake.set()

    # -- one cycle ----------------------------------------------------------------

    async def _cycle(self) -> None:
        if time.monotonic() - self._last_try >= (LEASE_CHECK_S if self.leading else FOLLOWER_RETRY_S):
            self._last_try = time.monotonic()
            leading = await asyncio.to_thread(self._lease.try_acquire)
            if not leading:
                if self.leading:
                    log.warning("no longer the scheduler leader")
                self.leading = False
                self._dispatched.clear()
                self._cached = None
                return
            if not self.leading:
                await asyncio.to_thread(self._ctx.projections.catch_up)
                self._leading_since = time.monotonic()
                self.leading = True
                await self._take_over()
        if not self.leading:
            return
        # Off the event loop, in one go: ingest and heartbeats go on while a long queue is weighed.
        # When no agent holding runs went silent, the placements are stored in the same trip.
        self._watch_nats()
        snapshot, decision, assigned = await asyncio.to_thread(self._read_decide_assign)
        if await self._handle_lost_agents(snapshot.holding):
            snapshot, decision = await asyncio.to_thread(self._read_and_decide)
            assigned = None
        await self._check_dispatches(snapshot.holding)
        now = time.monotonic()
        self._blocked_since = {r: self._blocked_since.get(r, now) for r in decision.reservations}
        if decision.placements:
            phase = time.perf_counter()
            if assigned is None:
                assigned = await asyncio.to_thread(self._store_assignments, decision.placements)
            await self._dispatch(decision.placements, *assigned)
            self.assign_seconds += time.perf_counter() - phase
            if any(not o.events for o in assigned[0]):
                self._cached = None  # a run moved on in a way the snapshot did not show: read afresh
            if self._more_to_place(snapshot, assigned[0]):
                self._wake.set()
        elif decision.reservations:
            await self._preempt(snapshot, decision)
        if time.monotonic() - self._stats_at >= STATS_EVERY_S:
            self._log_stats()

    def _read_decide_assign(
        self,
    ) -> tuple[Snapshot, Decision, tuple[list[Outcome], dict[str, tuple[str, common_pb2.RunSpec]]] | None]:
        snapshot, decision = self._read_and_decide()
        if not decision.placements or self._overdue(snapshot.holding) != ({}, {}):
            return snapshot, decision, None
        started = time.perf_counter()
        assigned = self._store_assignments(decision.placements)
        self.assign_seconds += time.perf_counter() - started
        return snapshot, decision, assigned

    @staticmethod
    def _more_to_place(snapshot: Snapshot, outcomes: Sequence[Outcome]) -> bool:
        """After assigning: may the next cycle place more at once (rather than on the next wake-up)?

        Yes when an assignment was skipped (its run moved on; the capacity is still free) or
        when an account's queue was cut at the cycle's window (runs behind it were not weighed).
        """
        return any(not o.events for o in outcomes) or _window_cut(snapshot)

    def _read_and_decide(self) -> tuple[Snapshot, Decision]:
        """Read (overlaid, or with the read models caught up) so capacity given away or freed is seen; decide."""
        started = time.perf_counter()
        with self._head_guard:
            head = self._head
        snapshot = self._overlaid(head)
        caught_up = time.perf_counter()
        if snapshot is None:
            if head == 0:
                self._ctx.projections.catch_up()
            else:
                self._ctx.projections.reach(head)
            caught_up = time.perf_counter()
            snapshot = self.reads.snapshot(self.heartbeats.alive, CYCLE_WINDOW_PER_ACCOUNT)
        read = time.perf_counter()
        queued = {q.run_id for q in snapshot.queue}
        self._promised = {r: a for r, a in self._promised.items() if r in queued}
        decision = schedule(snapshot.queue, snapshot.agents, snapshot.accounts, self._promised)
        took = time.perf_counter() - read
        self.read_seconds += read - started
        self.catch_up_seconds += caught_up - started
        if snapshot.queue:
            self.decisions += len(snapshot.queue)
            self.decision_seconds += took
            self.cycles += 1
            self.slowest_decision_s = max(self.slowest_decision_s, took)
        return snapshot, decision

    def _overlaid(self, head: int) -> Snapshot | None:
        """A snapshot without waiting for the read models, when they lag only by run transitions.

        A run's end frees GPUs the moment RunCompleted is stored; the read
        models show it a batch later. Rather than wait for that batch, read the
        transitions logged since the models' position and lay them over the
        snapshot (`queries.scheduling.overlay`); new runs join the queue from their
        RunCreated, so a submit is placed without waiting for the read models.
        Anything else in between (re-queues, agents, plans) needs the read
        models: None, and the caller catches them up.
        """
        cached = self._cached if time.monotonic() - self._cached_at < SNAPSHOT_REUSE_S else None
        self._cached = None
        position = cached[0] if cached is not None else self._ctx.projections.position
        if head == 0 or (cached is None and head <= position):
            return None
        events = self._ctx.store.read_all(position, OVERLAY_LIMIT, types=_OVERLAY_READ)
        if len(events) >= OVERLAY_LIMIT or any(e.type in _NEEDS_READ_MODELS for e in events):
            return None
        if cached is None:
            base = self.reads.snapshot(self.heartbeats.alive, CYCLE_WINDOW_PER_ACCOUNT)
            self._cached_at = time.monotonic()
        else:
            base = cached[1]
        transitions = [(e.stream_id.removeprefix("run:"), decode(e.type, e.data), e.position) for e in events]
        created: dict[str, events_pb2.RunCreated] = {}
        for run_id, msg, _ in transitions:
            if isinstance(msg, events_pb2.RunCreated):
                created[run_id] = msg
        if created and _window_cut(base):
            return None  # a new run may rank ahead of queued runs the window left out
        snapshot = overlay(base, transitions)
        if cached is None:
            self._created_specs.clear()  # the read models show every run created before `position`
        for run_id, run in created.items():
            self._created_specs[run_id] = (run.experiment_id, run.spec)
        if snapshot is not None and not _window_cut(base):
            # The next cycle starts from here and reads only what is logged after these transitions.
            self._cached = (events[-1].position if events else position, snapshot)
        return snapshot

    def _log_stats(self) -> None:
        self._stats_at = time.monotonic()
        if not self.cycles:
            return
        log.info(
            "scheduler stats",
            cycles=self.cycles,
            runs_considered=self.decisions,
            decision_us_per_run=round(1e6 * self.decision_seconds / max(self.decisions, 1), 2),
            decision_ms_per_cycle=round(1e3 * self.decision_seconds / self.cycles, 3),
            slowest_decision_ms=round(1e3 * self.slowest_decision_s, 3),
            read_ms_per_cycle=round(1e3 * self.read_seconds / self.cycles, 3),
            catch_up_ms_per_cycle=round(1e3 * self.catch_up_seconds / self.cycles, 3),
            assign_ms_per_run=round(1e3 * self.assign_seconds / max(self.assigned, 1), 3),
            assigned=self.assigned,
            preempted=self.preempted,
        )

    def _store_assignments(
        self, placements: Sequence[Placement]
    ) -> tuple[list[Outcome], dict[str, tuple[str, common_pb2.RunSpec]]]:
        """Append the cycle's RunAssigned events (one commit when none conflicts); read what to send.

        In a worker thread. RunAssigned wakes nothing (runyard.server.app.effects): the next cycle
        is woken only when there may be more to place (`_more_to_place`), not by every assignment.
        """
        specs = self.reads.specs([p.run_id for p in placements])
        for p in placements:  # runs placed straight from their RunCreated, perhaps not in the read models yet
            known = self._created_specs.pop(p.run_id, None)
            if p.run_id not in specs and known is not None:
                specs[p.run_id] = known
        batch = AssignRuns([AssignRun(p.run_id, p.agent_id, p.gpu_ids, p.gpu_model) for p in placements])
        try:
            outcomes: list[Outcome] = self._bus.execute(batch)
        except (ConcurrencyError, DomainError) as exc:
            log.info("a run moved on during the cycle; assigning one by one", error=str(exc))
            outcomes = [self._assign_one(p) for p in placements]
        return outcomes, specs

    async def _dispatch(
        self,
        placements: Sequence[Placement],
        outcomes: Sequence[Outcome],
        specs: dict[str, tuple[str, common_pb2.RunSpec]],
    ) -> None:
        """Send the work of every placement that was stored."""
        sends = []
        for p, outcome in zip(placements, outcomes, strict=True):
            for msg in outcome.events:
                if isinstance(msg, events_pb2.RunAssigned) and p.run_id in specs:
                    experiment_id, spec = specs[p.run_id]
                    resume = msg.resume_from if msg.HasField("resume_from") else None
                    sends.append(
                        self._send_work(
                            p.run_id, msg.attempt, p.agent_id, p.gpu_ids, experiment_id, spec, resume_from=resume
                        )
                    )
        await asyncio.gather(*sends)
        self.assigned += len(sends)

    def _assign_one(self, p: Placement) -> Outcome:
        try:
            outcome: Outcome = self._bus.execute(AssignRun(p.run_id, p.agent_id, p.gpu_ids, p.gpu_model))
            return outcome
        except (ConcurrencyError, DomainError) as exc:
            log.info("assignment skipped", run_id=p.run_id, error=str(exc))
            return Outcome([], 0)

    # -- preemption -----------------------------------------------------------------

    async def _preempt(self, snapshot: Snapshot, decision: Decision) -> None:
        """Stop runs whose GPUs a waiting run may take (runyard.server.domain.preemption); only in a cycle
        that placed nothing, so the snapshot's free capacity is what the policy sees.

        The waiting runs weighed are those holding a reservation: each account's first run left
        waiting for capacity (not quota), once it has waited so `preemption_wait_s` (short waits
        end by themselves as runs finish). While earlier victims are still stopping the policy
        preempts nothing more. Each taker then reserves the victims' agent (`_promised`), so the
        GPUs they free are kept for it.
        """
        now = time.monotonic()
        wait = self._ctx.config.preemption_wait_s
        due = {r for r, since in self._blocked_since.items() if now - since >= wait}
        if not due:
            return
        victims = choose_victims(
            [q for q in snapshot.queue if q.run_id in due],
            running_runs(snapshot.holding),
            [a for a in snapshot.agents if not a.draining],
            snapshot.accounts,
            snapshot.protected,
            _queued_gpus(snapshot),
        )
        if not victims:
            return
        specs = await asyncio.to_thread(self.reads.specs, [v.run_id for v in victims])
        for v in victims:
            spec = specs.get(v.run_id, ("", common_pb2.RunSpec()))[1]
            grace = spec.preemption_grace_seconds or DEFAULT_PREEMPTION_GRACE_S
            log.info("preempting", run_id=v.run_id, by_run_id=v.by_run_id, rule=v.rule, reason=v.reason)
            try:
                await self._bus.handle(PreemptRun(v.run_id, v.reason, v.by_run_id, v.rule, grace))
            except (ConcurrencyError, DomainError) as exc:
                log.info("preemption skipped", run_id=v.run_id, error=str(exc))
                continue
            self._promised[v.by_run_id] = v.agent_id
            self.preempted += 1
        self._cached = None

    # -- dispatch -------------------------------------------------------------------

    async def _send_work(
        self,
        run_id: str,
        attempt: int,
        agent_id: str,
        gpu_ids: Sequence[str],
        experiment_id: str,
        spec: common_pb2.RunSpec,
        resend: int = 0,
        resume_from: common_pb2.Checkpoint | None = None,
    ) -> None:
        work = agent_pb2.WorkAssignment(
            run_id=run_id, attempt=attempt, experiment_id=experiment_id, spec=spec, gpu_ids=list(gpu_ids)
        )
        if resume_from is not None:
            work.resume_from.CopyFrom(resume_from)  # Run.resume_from when the attempt was assigned
        # The first send of an attempt has a fixed id, so a new leader's re-send of work that did
        # arrive is dropped by JetStream; a re-send after a lost dispatch must get through.
        msg_id = f"{run_id}:{attempt}" if resend == 0 else f"{run_id}:{attempt}:resend-{resend}"
        work.lease_seconds = max(1, int(self._lease_s))  # whole seconds, never more than ours
        await self._js.publish(bus.work_subject(agent_id), work.SerializeToString(), headers={"Nats-Msg-Id": msg_id})
        self._dispatched[(run_id, attempt)] = (time.monotonic(), resend + 1)
        self._sent_at[(run_id, attempt)] = time.monotonic()

    async def send_cancel(
        self, run_id: str, reason: str = "", graceful: bool = False, grace_seconds: int = 0, kind: str = "cancel"
    ) -> None:
        """Ask the agent holding the run to stop it, with `grace_seconds` between SIGTERM and SIGKILL or,
        `graceful`, the run's preemption grace (or 60 s). `kind` ("cancel", "pause", "preempt") keeps
        JetStream's de-duplication from taking two different stops of one attempt for one message."""
        run = await asyncio.to_thread(self._ctx.queries.get_run, run_id)
        if run is None or not run.agent_id:
            return
        grace = grace_seconds
        if graceful and not grace:
            specs = await asyncio.to_thread(self.reads.specs, [run_id])
            spec = specs[run_id][1] if run_id in specs else None
            grace = (spec.preemption_grace_seconds if spec is not None else 0) or DEFAULT_STOP_GRACE_S
        cancel = agent_pb2.CancelAttempt(run_id=run_id, attempt=run.attempt, grace_seconds=grace, reason=reason)
        control = agent_pb2.AgentControl(cancel=cancel)
        await self._js.publish(
            bus.control_subject(run.agent_id),
            control.SerializeToString(),
            headers={"Nats-Msg-Id": f"{kind}:{run_id}:{run.attempt}"},
        )

    async def send_preempt(self, run_id: str, grace_seconds: int, reason: str) -> None:
        """Stop a preempted run: SIGTERM, then SIGKILL after its grace; the agent logs `reason`."""
        await self.send_cancel(run_id, reason, grace_seconds=grace_seconds, kind="preempt")

    async def _take_over(self) -> None:
        """A new leader re-sends work and cancels that its predecessor may have lost.

        JetStream's de-duplication window and the agent's attempt bookkeeping
        make a second delivery harmless.
        """
        log.info("scheduler leader: taking over")
        self._dispatched.clear()
        self._cached = None
        snapshot = await asyncio.to_thread(self.reads.snapshot, None)
        assigned = [
            h
            for h in snapshot.holding
            if h.state == common_pb2.RUN_STATE_ASSIGNED and not (h.cancel_requested or h.preempt_requested)
        ]
        await self._resend(assigned, fresh=True)
        for h in snapshot.holding:
            if h.cancel_requested:
                await self._resend_stop(h.run_id)
            elif h.preempt_requested:
                await self._resend_preempt(h)

    async def _resend_stop(self, run_id: str) -> None:
        """The stop a run was asked for, again: a pause keeps its grace (and last checkpoint) and its reason."""
        try:
            run = await asyncio.to_thread(self._bus.load, RUN, run_id)
        except Exception:
            log.exception("cannot read the run to re-send its stop; sending a plain cancel", run_id=run_id)
            await self.send_cancel(run_id)
            return
        if run.pause_requested and not (run.cancel_requested or run.stop_requested):
            await self.send_cancel(run_id, reason=run.pause_reason, graceful=True, kind="pause")
        else:
            await self.send_cancel(run_id)

    async def _resend_preempt(self, h: Holding) -> None:
        """A new leader sends a preemption its predecessor may have lost, with the run's grace and reason."""
        specs = await asyncio.to_thread(self.reads.specs, [h.run_id])
        spec = specs.get(h.run_id, ("", common_pb2.RunSpec()))[1]
        grace = spec.preemption_grace_seconds or DEFAULT_PREEMPTION_GRACE_S
        run = await asyncio.to_thread(self._ctx.queries.get_run, h.run_id)
        by = f" by run {run.preempted_by} ({run.preempt_rule})" if run is not None and run.preempted_by else ""
        await self.send_preempt(h.run_id, grace, f"preempted{by}")

    async def _resend(self, runs: Sequence[Holding], fresh: bool) -> None:
        if not runs:
            return
        specs = await asyncio.to_thread(self.reads.specs, [h.run_id for h in runs])
        resumes = await asyncio.to_thread(self.reads.resume_points, [(h.run_id, h.attempt) for h in runs])
        for h in runs:
            if h.run_id not in specs:
                continue
            experiment_id, spec = specs[h.run_id]
            resend = 0 if fresh else self._dispatched.get((h.run_id, h.attempt), (0.0, 1))[1]
            await self._send_work(
                h.run_id, h.attempt, h.agent_id, h.gpu_ids, experiment_id, spec, resend, resumes.get(h.run_id)
            )

    async def _check_dispatches(self, holding: Sequence[Holding]) -> None:
        """Re-send work whose agent is alive but has not taken it (its heartbeats do not list it)."""
        now = time.monotonic()
        assigned = {(h.run_id, h.attempt): h for h in holding if h.state == common_pb2.RUN_STATE_ASSIGNED}
        for key in [k for k in self._dispatched if k not in assigned]:
            del self._dispatched[key]
        lost: list[Holding] = []
        for key, h in assigned.items():
            if h.cancel_requested or h.preempt_requested:
                continue  # being stopped: its lease ends it if the work never arrived
            if key not in self._dispatched:  # assigned before this leader: watch it from now
                self._dispatched[key] = (now, 1)
                continue
            sent_at, _ = self._dispatched[key]
            if now - sent_at < REDISPATCH_AFTER_S or not self.heartbeats.alive(h.agent_id):
                continue
            if self.heartbeats.holds(h.agent_id, h.run_id, h.attempt, sent_at + HEARTBEAT_GRACE_S) is False:
                lost.append(h)
        if lost:
            log.warning("re-sending work its agent has not taken", runs=[f"{h.run_id}:{h.attempt}" for h in lost])
            await self._resend(lost, fresh=False)

    # -- liveness -------------------------------------------------------------------

    def _watch_nats(self) -> None:
        """While our NATS link is down, or once it came back, heartbeats may have been missed."""
        nc = self._nc
        if nc is None:
            return
        reconnects = int(getattr(nc, "stats", {}).get("reconnects", 0))
        if not getattr(nc, "is_connected", True) or reconnects != self._nats_reconnects:
            self._nats_reconnects = reconnects
            self.heartbeats.restart_watch()

    def _lease_start(self, h: Holding, now: float) -> float:
        """When the attempt's lease was last renewed (monotonic): listed, sent, or we started listening.

        An attempt we neither sent nor heard of (sent by another leader) is watched from now.
        """
        key = (h.run_id, h.attempt)
        listed = self.heartbeats.last_listed(h.agent_id, h.run_id, h.attempt)
        sent = self._sent_at.get(key)
        if sent is None and listed is None:
            self._sent_at[key] = sent = now
        return max(listed or 0.0, sent or 0.0, self._leading_since, self.heartbeats.since)

    def _overdue(self, holding: Sequence[Holding]) -> tuple[dict[str, list[str]], dict[str, list[Holding]]]:
        """Silent agents not yet declared lost (with their runs), and attempts whose lease ended, by agent."""
        now = time.monotonic()
        held = {(h.run_id, h.attempt) for h in holding}
        for key in [k for k in self._sent_at if k not in held]:
            del self._sent_at[key]
        silent: dict[str, list[str]] = {}
        expired: dict[str, list[Holding]] = {}
        for h in holding:
            if h.agent_id not in self._declared_lost and self.heartbeats.lost(h.agent_id):
                silent.setdefault(h.agent_id, []).append(h.run_id)
            if now - self._lease_start(h, now) >= self._lease_s:
                expired.setdefault(h.agent_id, []).append(h)
        return silent, expired

    async def _handle_lost_agents(self, holding: Sequence[Holding]) -> bool:
        """Declare silent agents lost and end attempts whose lease ended; True when anything was logged."""
        silent, expired = self._overdue(holding)
        position = 0
        for agent_id, run_ids in silent.items():
            log.warning("agent lost; its attempts end with their leases", agent_id=agent_id, runs=run_ids)
            position = await self._bus.handle(
                DeclareAgentLost(agent_id, [], f"no heartbeat for {self._ctx.config.agent_timeout_s:.0f}s")
            )
            self._declared_lost.add(agent_id)
        for agent_id, attempts in expired.items():
            alive = self.heartbeats.alive(agent_id)
            for h in attempts:
                if alive:
                    why = f"agent {agent_id} no longer lists attempt {h.attempt} in its heartbeats"
                else:
                    why = f"no heartbeat from agent {agent_id}"
                message = f"{why}: its lease of {self._lease_s:.0f}s ended"
                log.warning("attempt lease ended", agent_id=agent_id, run_id=h.run_id, attempt=h.attempt, why=why)
                done = await self._bus.handle(ExpireAttempt(agent_id, h.run_id, h.attempt, message))
                position = max(position, done)
                self._sent_at.pop((h.run_id, h.attempt), None)
                # Should the agent still have it after all (it should not), it stops it.
                control = agent_pb2.AgentControl(cancel=agent_pb2.CancelAttempt(run_id=h.run_id, attempt=h.attempt))
                with contextlib.suppress(Exception):
                    await self._js.publish(
                        bus.control_subject(agent_id),
                        control.SerializeToString(),
                        headers={"Nats-Msg-Id": f"expired:{h.run_id}:{h.attempt}"},
                    )
        if position:
            await asyncio.to_thread(self._ctx.projections.wait_for, position, 10.0)
        return bool(silent or expired)
