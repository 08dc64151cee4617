"""What the scheduling policy decides on, read from the read models.

One snapshot: the queue, the agents with what is taken on each, and every
account's plan and use. Reads stay cheap with ten thousand queued runs: the
queue query takes small columns only, and what a run needs of an agent
(framework and version, image, GPU model, labels) is parsed from its RunSpec once and kept while
the run stays queued, since a run's spec never changes.

Accounts come from the accounts read model; an account with no row there (no
plan set, or the accounts projection not yet built) is unlimited.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import Engine, and_, func, select

from runyard.server.domain.run_states import HOLDING_SLOTS
from runyard.server.domain.scheduling import AccountState, AgentState, FrameworkOffer, Gpu, QueuedRun
from runyard.server.projections import schema
from runyard.v1 import common_pb2, events_pb2

_CHUNK = 500


@dataclass(frozen=True)
class Requirements:
    """What a run asks of an agent, from its spec."""

    framework: str
    gpu_model: str
    labels: tuple[tuple[str, str], ...]
    framework_version: str = ""
    image: str = ""
    not_preemptible: bool = False

    @classmethod
    def of(cls, spec: common_pb2.RunSpec) -> Requirements:
        return cls(
            spec.framework.name or "python",
            spec.resources.gpu_model,
            tuple(sorted(spec.resources.agent_labels.items())),
            spec.framework.version,
            spec.image,
            spec.not_preemptible,
        )


@dataclass(frozen=True)
class Holding:
    """A run that holds slots (and GPUs) on an agent."""

    run_id: str
    experiment_id: str
    account_id: str
    agent_id: str
    gpu_ids: tuple[str, ...]
    gpus: int
    attempt: int
    state: int
    cancel_requested: bool
    # What preemption weighs (runyard.server.domain.preemption).
    priority: int = 0
    not_preemptible: bool = False
    #: Log position of the attempt's RunAssigned: larger is younger.
    assigned_position: int = 0
    #: The attempt is being stopped for another run.
    preempt_requested: bool = False


@dataclass
class Snapshot:
    queue: list[QueuedRun]
    #: Agents that may take work now (alive, not lost); draining ones flagged.
    agents: list[AgentState]
    accounts: dict[str, AccountState]
    holding: list[Holding]
    experiment_of: dict[str, str] = field(default_factory=dict)
    #: What agents and accounts were built from, so `overlay` can rebuild them.
    agent_rows: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, tuple[int, int]] = field(default_factory=dict)
    alive: Callable[[str], bool] | None = None
    #: Accounts whose policy forbids preempting their runs.
    protected: frozenset[str] = frozenset()


class SchedulingReads:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._requirements: dict[str, Requirements] = {}
        self._lock = threading.Lock()

    def snapshot(self, alive: Callable[[str], bool] | None = None, per_account: int | None = None) -> Snapshot:
        """The queue, live agents (those `alive` accepts) and accounts, from one read of each table.

        `per_account` keeps only the first that many queued runs of each account (in its queue
        order): what a placement cycle needs, read in a fraction of the time with a long queue.
        """
        with self._engine.connect() as conn:
            r = schema.runs
            columns = [r.c.id, r.c.account_id, r.c.experiment_id, r.c.gpus, r.c.priority, r.c.queued_position]
            waiting = and_(r.c.state == common_pb2.RUN_STATE_QUEUED, r.c.cancel_requested.is_(False))
            if per_account is None:
                query = select(*columns).where(waiting).order_by(r.c.queued_position)
            else:
                rank = (
                    func.row_number()
                    .over(partition_by=r.c.account_id, order_by=(r.c.priority.desc(), r.c.queued_position))
                    .label("rank")
                )
                ranked = select(*columns, rank).where(waiting).subquery()
                query = (
                    select(*(ranked.c[c.name] for c in columns))
                    .where(ranked.c.rank <= per_account)
                    .order_by(ranked.c.queued_position)
                )
            queued_rows = conn.execute(query).all()
            holding = [
                Holding(
                    row.id,
                    row.experiment_id,
                    row.account_id,
                    row.agent_id,
                    tuple(json.loads(row.gpu_ids)),
                    int(row.gpus),
                    int(row.attempt),
                    int(row.state),
                    bool(row.cancel_requested),
                    int(row.priority),
                    bool(row.not_preemptible),
                    int(row.assigned_position),
                    bool(row.preempt_requested),
                )
                for row in conn.execute(
                    select(
                        r.c.id,
                        r.c.experiment_id,
                        r.c.account_id,
                        r.c.agent_id,
                        r.c.gpu_ids,
                        r.c.gpus,
                        r.c.attempt,
                        r.c.state,
                        r.c.cancel_requested,
                        r.c.priority,
                        r.c.not_preemptible,
                        r.c.assigned_position,
                        r.c.preempt_requested,
                    ).where(r.c.state.in_(sorted(HOLDING_SLOTS)))
                )
            ]
            agent_rows = [dict(x) for x in conn.execute(select(schema.agents)).mappings()]
            plans = {}
            protected = set()
            a = schema.accounts
            for row in conn.execute(select(a.c.id, a.c.gpu_quota, a.c.run_quota, a.c.preemptible)):
                plans[row.id] = (int(row.gpu_quota), int(row.run_quota))
                if not row.preemptible:
                    protected.add(row.id)
            requirements = self._requirements_for(conn, [row.id for row in queued_rows])
        queue = []
        for row in queued_rows:
            need = requirements.get(row.id)
            if need is None:  # its row went away between the two reads (a rebuild): next time
                continue
            queue.append(
                QueuedRun(
                    run_id=row.id,
                    account_id=row.account_id,
                    gpus=int(row.gpus),
                    gpu_model=need.gpu_model,
                    labels=dict(need.labels),
                    framework=need.framework,
                    priority=int(row.priority),
                    queued_position=int(row.queued_position),
                    framework_version=need.framework_version,
                    image=need.image,
                    not_preemptible=need.not_preemptible,
                )
            )
        agents = [
            agent_state(row, holding) for row in agent_rows if not row["lost"] and (alive is None or alive(row["id"]))
        ]
        return Snapshot(
            queue=queue,
            agents=agents,
            accounts=account_states(plans, holding, {q.account_id for q in queue}),
            holding=holding,
            experiment_of={row.id: row.experiment_id for row in queued_rows},
            agent_rows=agent_rows,
            plans=plans,
            alive=alive,
            protected=frozenset(protected),
        )

    def registered_agents(self) -> list[AgentState]:
        """Every agent not declared lost, alive or not: what "could this ever run" is judged against."""
        with self._engine.connect() as conn:
            rows = [
                dict(x) for x in conn.execute(select(schema.agents).where(schema.agents.c.lost.is_(False))).mappings()
            ]
        return [agent_state(row, []) for row in rows]

    def specs(self, run_ids: Sequence[str]) -> dict[str, tuple[str, common_pb2.RunSpec]]:
        """Run id -> (experiment id, RunSpec): what a WorkAssignment carries."""
        r = schema.runs
        out: dict[str, tuple[str, common_pb2.RunSpec]] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(run_ids), _CHUNK):
                chunk = list(run_ids[start : start + _CHUNK])
                for row in conn.execute(select(r.c.id, r.c.experiment_id, r.c.spec).where(r.c.id.in_(chunk))):
                    spec = common_pb2.RunSpec()
                    spec.ParseFromString(row.spec)
                    out[row.id] = (row.experiment_id, spec)
        return out

    def resume_points(self, runs: Sequence[tuple[str, int]]) -> dict[str, common_pb2.Checkpoint]:
        """Run id -> the checkpoint its (run id, attempt) resumes from, as its RunAssigned recorded; none: afresh.

        What a re-sent WorkAssignment carries (the first send takes it from the RunAssigned itself).
        """
        t = schema.run_attempts
        ids = [f"{run_id}/{attempt}" for run_id, attempt in runs]
        out: dict[str, common_pb2.Checkpoint] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                for row in conn.execute(select(t.c.run_id, t.c.resumed_from).where(t.c.id.in_(chunk))):
                    if row.resumed_from:
                        out[row.run_id] = common_pb2.Checkpoint.FromString(row.resumed_from)
        return out

    def account(self, account_id: str) -> AccountState | None:
        """The account's plan (no use), or None when it has none."""
        a = schema.accounts
        with self._engine.connect() as conn:
            row = conn.execute(select(a.c.gpu_quota, a.c.run_quota).where(a.c.id == account_id)).first()
        if row is None:
            return None
        return AccountState(account_id, int(row.gpu_quota), int(row.run_quota))

    def _requirements_for(self, conn: Any, run_ids: Sequence[str]) -> dict[str, Requirements]:
        with self._lock:
            known = self._requirements
            missing = [i for i in run_ids if i not in known]
        found: dict[str, Requirements] = {}
        r = schema.runs
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start : start + _CHUNK]
            for row in conn.execute(select(r.c.id, r.c.spec).where(r.c.id.in_(chunk))):
                spec = common_pb2.RunSpec()
                spec.ParseFromString(row.spec)
                found[row.id] = Requirements.of(spec)
        with self._lock:
            # Keep only what is still queued: the cache never outgrows the queue.
            merged = {i: need for i in run_ids if (need := found.get(i) or known.get(i)) is not None}
            self._requirements = merged
        return merged


def agent_state(row: dict[str, Any], holding: Sequence[Holding]) -> AgentState:
    """An agents row, with the runs that hold slots on it, as the policy sees it."""
    details = {g.get("uuid", ""): g for g in json.loads(row.get("gpus") or "[]")}
    gpus = tuple(Gpu(gpu_id, str(details.get(gpu_id, {}).get("model", ""))) for gpu_id in json.loads(row["gpu_ids"]))
    mine = [h for h in holding if h.agent_id == row["id"]]
    return AgentState(
        agent_id=row["id"],
        slots=int(row["slots"]),
        gpus=gpus,
        busy_gpu_ids=frozenset(g for h in mine for g in h.gpu_ids),
        running=len(mine),
        frameworks=frozenset(FrameworkOffer(n, v) for n, v, _ in schema.agent_frameworks(row["frameworks"])),
        labels=json.loads(row["labels"]),
        draining=bool(row.get("draining", False)),
        runtime=str(row.get("runtime") or "process"),
    )


def account_states(
    plans: dict[str, tuple[int, int]], holding: Sequence[Holding], queued_accounts: set[str]
) -> dict[str, AccountState]:
    """Plan and use of every account that holds or waits for something."""
    gpus: dict[str, int] = {}
    runs: dict[str, int] = {}
    for h in holding:
        if h.gpus:
            gpus[h.account_id] = gpus.get(h.account_id, 0) + h.gpus
        else:
            runs[h.account_id] = runs.get(h.account_id, 0) + 1
    out = {}
    for account_id in queued_accounts | set(gpus) | set(runs):
        plan = plans.get(account_id)
        out[account_id] = AccountState(
            account_id,
            gpu_quota=plan[0] if plan else None,
            run_quota=plan[1] if plan else 0,
            gpus_in_use=gpus.get(account_id, 0),
            runs_in_use=runs.get(account_id, 0),
        )
    return out


#: Run transitions `overlay` applies on top of a snapshot; every other event waits for the read models.
OVERLAY_TYPES = (
    events_pb2.RunCreated,
    events_pb2.RunAssigned,
    events_pb2.RunCompleted,
    events_pb2.RunFailed,
    events_pb2.RunCanceled,
    events_pb2.RunStoppedEarly,
    events_pb2.RunRequeued,
    events_pb2.RunCancelRequested,
    events_pb2.RunStopRequested,
    events_pb2.RunPauseRequested,
    events_pb2.RunPaused,
    events_pb2.RunPreemptRequested,
)


def overlay(snapshot: Snapshot, transitions: Sequence[tuple[str, Message, int]]) -> Snapshot | None:
    """The snapshot with run transitions the read models may not show yet, as (run id, event, position) in log order.

    The scheduler need not wait for the read models to learn that a GPU was
    freed or a run submitted: it reads the few transitions logged since their
    position and lays them over. Idempotent (the rows may already include
    some), and fenced by attempt: an old attempt's end never frees the GPUs of
    a newer one. A new run joins the queue at its position (the caller makes
    sure no account's queue was cut at the cycle's window). A re-queued run is
    left for the next cycle (so is a resumed one). A paused run leaves the queue,
    or frees its GPUs like an end. None when an assignment names a run the snapshot
    does not know (outside its window), or a new run's account has no plan in
    it: the caller then waits for the read models instead of guessing.
    """
    queue = {q.run_id: q for q in snapshot.queue}
    holding = {h.run_id: h for h in snapshot.holding}
    experiment_of = dict(snapshot.experiment_of)
    created: list[QueuedRun] = []
    for run_id, msg, position in transitions:
        held = holding.get(run_id)
        if isinstance(msg, events_pb2.RunCreated):
            if run_id in queue or held is not None or run_id in experiment_of:
                continue  # the rows show it already
            if msg.account_id not in snapshot.plans:
                return None
            need = Requirements.of(msg.spec)
            queue[run_id] = QueuedRun(
                run_id=run_id,
                account_id=msg.account_id,
                gpus=msg.spec.resources.gpus,
                gpu_model=need.gpu_model,
                labels=dict(need.labels),
                framework=need.framework,
                priority=msg.spec.priority,
                queued_position=position,
                framework_version=need.framework_version,
                image=need.image,
                not_preemptible=need.not_preemptible,
            )
            created.append(queue[run_id])
            experiment_of[run_id] = msg.experiment_id
        elif isinstance(msg, events_pb2.RunAssigned):
            if held is not None and held.attempt >= msg.attempt:
                continue
            waiting = queue.pop(run_id, None)
            if waiting is None:
                return None
            holding[run_id] = Holding(
                run_id,
                snapshot.experiment_of.get(run_id, ""),
                waiting.account_id,
                msg.agent_id,
                tuple(msg.gpu_ids),
                waiting.gpus,
                msg.attempt,
                common_pb2.RUN_STATE_ASSIGNED,
                False,
                waiting.priority,
                waiting.not_preemptible,
                position,
            )
        elif held is None:
            if (
                isinstance(msg, events_pb2.RunCanceled | events_pb2.RunStoppedEarly | events_pb2.RunPaused)
                and msg.attempt == 0
            ):
                queue.pop(run_id, None)  # ended (or paused) straight from the queue: it waits for nothing
            continue
        elif isinstance(
            msg, events_pb2.RunCancelRequested | events_pb2.RunStopRequested | events_pb2.RunPauseRequested
        ):
            holding[run_id] = replace(held, cancel_requested=True)
        elif isinstance(msg, events_pb2.RunPreemptRequested):
            holding[run_id] = replace(held, preempt_requested=True)
        elif getattr(msg, "attempt", None) == held.attempt:  # the end of the attempt that holds the GPUs
            del holding[run_id]
    held_now = list(holding.values())
    remaining = [q for q in [*snapshot.queue, *created] if q.run_id in queue]
    agents = [
        agent_state(row, held_now)
        for row in snapshot.agent_rows
        if not row["lost"] and (snapshot.alive is None or snapshot.alive(row["id"]))
    ]
    return replace(
        snapshot,
        queue=remaining,
        holding=held_now,
        agents=agents,
        accounts=account_states(snapshot.plans, held_now, {q.account_id for q in remaining}),
        experiment_of=experiment_of,
    )
