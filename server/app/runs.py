"""Handlers of the run and agent use cases: cancel, pause, resume, assign (the scheduler), leases, lost and
drained agents."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from google.protobuf.message import Message

from runyard.server.app import commands as c
from runyard.server.app.aggregates import AGENT, EXPERIMENT, RUN, AgentDrain, change, load
from runyard.server.app.experiments import resume_within
from runyard.server.app.unit_of_work import Outcome, UnitOfWork
from runyard.server.domain import events as ev
from runyard.server.domain.run import Run
from runyard.v1 import events_pb2


def cancel_run(cmd: c.CancelRun, uow: UnitOfWork) -> Outcome:
    return change(uow, RUN, cmd.run_id, lambda run: run.request_cancel(cmd.reason))


def pause_run(cmd: c.PauseRun, uow: UnitOfWork) -> Outcome:
    """RunPauseRequested (the bus then asks the agent to stop), or RunPaused from the queue; nothing for a run
    that ended, is paused or is already stopping."""
    return change(uow, RUN, cmd.run_id, lambda run: run.request_pause(cmd.reason, cmd.rung), _ids(cmd.event_id))


def resume_run(cmd: c.ResumeRun, uow: UnitOfWork) -> Outcome:
    """RunResumed: the paused run is queued again; nothing for a run that is not paused.

    While its experiment is paused, the promotion is recorded and the run paused again for the
    experiment (`resume_within`): the experiment's resume queues it.
    """

    def decide(run: Run) -> list[Message]:
        if not run.experiment_id:
            return run.resume(cmd.reason, cmd.rung)
        return resume_within(load(uow, EXPERIMENT, run.experiment_id), run, cmd.reason, cmd.rung)

    return change(uow, RUN, cmd.run_id, decide, _ids(cmd.event_id))


def _ids(event_id: uuid.UUID | None) -> Callable[[int], list[uuid.UUID]] | None:
    """The ids of what a pause or resume records: the decision's id first, the others derived from it
    (None: random ids). A re-derived decision so appends nothing new."""
    if event_id is None:
        return None
    return lambda n: [event_id] + [uuid.uuid5(event_id, str(i)) for i in range(1, n)]


def assign_run(cmd: c.AssignRun, uow: UnitOfWork) -> Outcome:
    return change(uow, RUN, cmd.run_id, lambda run: run.assign(cmd.agent_id, list(cmd.gpu_ids), cmd.gpu_model))


def preempt_run(cmd: c.PreemptRun, uow: UnitOfWork) -> Outcome:
    """Ask the run's agent to stop it for another run (nothing when it is not preemptible or already stopping)."""
    return change(
        uow,
        RUN,
        cmd.run_id,
        lambda run: run.request_preempt(cmd.reason, cmd.by_run_id, cmd.rule, cmd.grace_seconds),
    )


def assign_runs(cmd: c.AssignRuns, uow: UnitOfWork) -> list[Outcome]:
    """Assign many runs in one transaction.

    The log takes one writer at a time, so a scheduling cycle's assignments
    commit once instead of once each. All or nothing: if any run moved on
    meanwhile this raises (ConcurrencyError, DomainError) and nothing is
    stored; the caller then assigns one by one.
    """
    decided: list[tuple[Run, list[Message]]] = []
    for p in cmd.placements:
        run = load(uow, RUN, p.run_id)
        decided.append((run, run.assign(p.agent_id, list(p.gpu_ids), p.gpu_model)))
    outcomes = []
    with uow.transaction() as tx:
        for run, new in decided:
            result = tx.append(ev.run_stream(run.run_id), new, run.version, run.experiment_id)
            outcomes.append(Outcome(new, result.last_position))
    return outcomes


def expire_attempt(cmd: c.ExpireAttempt, uow: UnitOfWork) -> int:
    """The attempt's lease ended without its end being reported: end it as AGENT_LOST (see the scheduler)."""
    return change(uow, RUN, cmd.run_id, lambda run: run.agent_lost(cmd.agent_id, cmd.message, cmd.attempt)).position


def declare_agent_lost(cmd: c.DeclareAgentLost, uow: UnitOfWork) -> int:
    position = uow.append(ev.agent_stream(cmd.agent_id), [events_pb2.AgentLost(message=cmd.message)]).last_position
    for run_id in cmd.run_ids:
        outcome = change(uow, RUN, run_id, lambda run: run.agent_lost(cmd.agent_id))
        position = max(position, outcome.position)
    return position


def drain_agent(cmd: c.DrainAgent, uow: UnitOfWork) -> int:
    """Stop (or resume) giving the agent new runs; its current runs go on.

    Returns the position, or 0 when the agent already was in that state.
    """

    def decide(agent: AgentDrain) -> list[Message]:
        if agent.draining == (not cmd.undrain):
            return []
        return [events_pb2.AgentDrainCleared() if cmd.undrain else events_pb2.AgentDrainRequested(reason=cmd.reason)]

    return change(uow, AGENT, cmd.agent_id, decide).position
