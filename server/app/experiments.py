"""Handlers of the experiment use cases: submit, cancel, pause, resume, reprioritise, and the searcher's decisions.

Submit parses the manifest once and hands the parsed manifest to every check
(the account's storage grants, what the account's plan and the cluster could
ever run, the queued-runs cap) and to the domain that creates it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from runyard.server.app import commands as c
from runyard.server.app.aggregates import EXPERIMENT, RUN, load
from runyard.server.app.aggregates import change as change_aggregate
from runyard.server.app.errors import FailedPrecondition, InvalidArgument, LimitExceeded, NotFound
from runyard.server.app.storage_access import SubmitStorageCheck
from runyard.server.app.unit_of_work import Outcome, UnitOfWork
from runyard.server.domain import events as ev
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.experiment import EXPERIMENT_PAUSE, EXPERIMENT_RESUME, Experiment, runs_at_submit
from runyard.server.domain.manifest import Manifest, parse_manifest
from runyard.server.domain.manifest_parse import RUN_ID
from runyard.server.domain.run import Run
from runyard.server.domain.run_states import PAUSED
from runyard.server.queries.scheduling import SchedulingReads
from runyard.server.scheduler.admission import RefusalKind, submit_refusal
from runyard.server.store import NO_STREAM, ConcurrencyError
from runyard.v1 import common_pb2, events_pb2

#: The status a caller gets for each admission refusal (see runyard.server.scheduler.admission).
_ADMISSION = {
    RefusalKind.CAPACITY: FailedPrecondition,
    RefusalKind.UNKNOWN_MODEL: InvalidArgument,
    RefusalKind.NOT_OFFERED: InvalidArgument,
    RefusalKind.QUOTA: LimitExceeded,
}


@dataclass(frozen=True)
class SubmitChecks:
    """What a submit is checked against before anything is stored (None: that check is off)."""

    storage: SubmitStorageCheck | None = None
    scheduling: SchedulingReads | None = None
    #: (max_queued_runs, runs queued now) of an account, from the read models.
    queue_room: Callable[[str], tuple[int, int]] | None = None


@dataclass(frozen=True)
class Submitted:
    experiment_id: str
    position: int


def submit_experiment(cmd: c.SubmitExperiment, uow: UnitOfWork, checks: SubmitChecks = SubmitChecks()) -> Submitted:
    """Returns the experiment and its position; a repeated request id returns the first experiment.

    Refusals come first, in this order: storage (whether another account's code
    package exists is none of the caller's business), then the plan and the
    cluster, then the queued-runs cap. A manifest that does not parse skips the
    checks that need it and is refused by the create, with what is wrong.
    """
    manifest: Manifest | None
    unparsed: Exception | None = None
    try:
        manifest = parse_manifest(cmd.manifest_yaml)
    except (ManifestError, ValueError) as exc:
        manifest, unparsed = None, exc
    if checks.storage is not None:
        checks.storage.check(uow, cmd.account_id, manifest, cmd.code_uri)
    if manifest is not None:
        _check_admission(checks, cmd.account_id, manifest)
    if unparsed is not None:
        raise unparsed
    assert manifest is not None
    return _create(cmd, manifest, uow)


def _check_admission(checks: SubmitChecks, account_id: str, manifest: Manifest) -> None:
    """Why the account's plan, the cluster or the queued-runs cap refuses this experiment."""
    if checks.scheduling is not None:
        refusal = submit_refusal(checks.scheduling, account_id, manifest)
        if refusal is not None:
            raise _ADMISSION[refusal.kind](refusal.message)
    if checks.queue_room is None:
        return
    cap, queued = checks.queue_room(account_id)
    if not cap:
        return
    try:
        adding = runs_at_submit(manifest)
    except ValueError:
        return  # creating it says what is wrong with the manifest
    if queued + adding > cap:
        raise LimitExceeded(
            f"max_queued_runs: account {account_id} may have {cap} runs queued; {queued} are queued and this"
            f" experiment would add {adding}"
        )


def _create(cmd: c.SubmitExperiment, manifest: Manifest, uow: UnitOfWork) -> Submitted:
    if cmd.client_request_id:
        experiment_id = ev.experiment_id_for_request(cmd.account_id, cmd.client_request_id)
    else:
        experiment_id = ev.new_experiment_id()
    stream = ev.experiment_stream(experiment_id)
    existing = uow.first_position(stream)
    if existing:
        return Submitted(experiment_id, existing)
    start_from = _fork_checkpoint(uow, cmd.account_id, cmd.from_run or manifest.from_run)
    created, runs = Experiment.create(
        experiment_id, cmd.account_id, manifest, cmd.manifest_yaml, cmd.code_uri, cmd.client_request_id, start_from
    )
    try:
        with uow.transaction() as tx:
            tx.append(stream, [created], NO_STREAM, experiment_id)
            for run_id, run_created in runs:
                tx.append(ev.run_stream(run_id), [run_created], NO_STREAM, experiment_id)
    except ConcurrencyError:
        # The same request id raced with itself: the first one won.
        first = uow.first_position(stream)
        if not first:
            raise
        return Submitted(experiment_id, first)
    return Submitted(experiment_id, tx.last_position)


def _fork_checkpoint(uow: UnitOfWork, account_id: str, run_id: str) -> common_pb2.Checkpoint | None:
    """The latest checkpoint of the run a fork starts from (None: no fork).

    Another account's run is NOT_FOUND, as an unknown one: whether it exists is none of the caller's business.
    """
    if not run_id:
        return None
    if not RUN_ID.fullmatch(run_id):
        raise NotFound("run", run_id[:80])
    try:
        run = load(uow, RUN, run_id)
    except NotFound:
        raise NotFound("run", run_id) from None
    if run.account_id != account_id:
        raise NotFound("run", run_id)
    checkpoint = run.latest_checkpoint
    if checkpoint is None:
        raise FailedPrecondition(f"from_run: run {run_id} has no checkpoint to start from")
    return checkpoint


def cancel_experiment(cmd: c.CancelExperiment, uow: UnitOfWork) -> int:
    """Cancels every unfinished run; the bus sends the cancels to the agents holding them. Returns the position."""
    reason = cmd.reason
    outcome = change_aggregate(
        uow, EXPERIMENT, cmd.experiment_id, lambda e: [] if e.cancel_requested else e.request_cancel(reason)
    )
    position = outcome.position
    experiment = load(uow, EXPERIMENT, cmd.experiment_id)
    for run_id in experiment.run_ids:
        run = load(uow, RUN, run_id)
        if run.is_terminal or run.cancel_requested:
            continue
        done = change_aggregate(
            uow, RUN, run_id, lambda r: [] if r.is_terminal or r.cancel_requested else r.request_cancel(reason)
        )
        position = max(position, done.position)
    return position


def _runs_ended(uow: UnitOfWork, experiment: Experiment) -> bool:
    """Has every run of the experiment ended (a plain experiment with nothing left to pause or resume)?"""
    return bool(experiment.run_ids) and all(load(uow, RUN, run_id).is_terminal for run_id in experiment.run_ids)


def pause_experiment(cmd: c.PauseExperiment, uow: UnitOfWork) -> int:
    """Pause the experiment, then each unfinished run; returns the position (0 when nothing changed).

    A queued run is PAUSED at once; a run on an agent gets RunPauseRequested,
    whose effect asks the agent to stop it (SIGTERM, grace, a last checkpoint),
    and its stop then pauses it. Pausing a paused experiment changes nothing
    but pauses any run the pause missed.
    """
    ended = _runs_ended(uow, load(uow, EXPERIMENT, cmd.experiment_id))
    position = change_aggregate(uow, EXPERIMENT, cmd.experiment_id, lambda e: e.pause(cmd.reason, ended)).position
    experiment = load(uow, EXPERIMENT, cmd.experiment_id)
    if not experiment.paused:
        return position  # resumed meanwhile
    for run_id in experiment.run_ids:
        done = change_aggregate(uow, RUN, run_id, lambda r: r.request_pause(EXPERIMENT_PAUSE))
        position = max(position, done.position)
    return position


def resume_experiment(cmd: c.ResumeExperiment, uow: UnitOfWork) -> int:
    """Resume the experiment, then put each run paused for it back in the queue; returns the position.

    Runs paused for another reason (ASHA at a rung) stay paused. A run whose
    stop was asked but not reported yet pauses later; `settle_paused_run`
    resumes it then.
    """
    ended = _runs_ended(uow, load(uow, EXPERIMENT, cmd.experiment_id))
    position = change_aggregate(uow, EXPERIMENT, cmd.experiment_id, lambda e: e.resume(cmd.reason, ended)).position
    experiment = load(uow, EXPERIMENT, cmd.experiment_id)
    if experiment.paused:
        return position  # paused again meanwhile
    for run_id in experiment.run_ids:
        done = change_aggregate(uow, RUN, run_id, _resume_if_paused_for_experiment)
        position = max(position, done.position)
    return position


def _resume_if_paused_for_experiment(run: Run) -> list[Message]:
    if run.state != PAUSED or run.pause_reason != EXPERIMENT_PAUSE:
        return []
    return run.resume(EXPERIMENT_RESUME)


def resume_within(experiment: Experiment, run: Run, reason: str = "", rung: int = 0) -> list[Message]:
    """A searcher's resume of a paused run (ASHA's promotion) that respects its experiment's pause.

    While the experiment is paused the run is resumed and paused again for the
    experiment in one commit (RunResumed, RunPaused attempt 0): the promotion is
    recorded, and the experiment's resume queues the run later.
    """
    resumed = run.resume(reason, rung)
    if resumed and experiment.paused:
        return [*resumed, events_pb2.RunPaused(attempt=0, reason=EXPERIMENT_PAUSE)]
    return resumed


def settle_paused_run(cmd: c.SettlePausedRun, uow: UnitOfWork) -> int:
    """After a RunPaused: a run paused for its experiment that was resumed (or ended) meanwhile queues again."""
    run = load(uow, RUN, cmd.run_id)
    if run.state != PAUSED or run.pause_reason != EXPERIMENT_PAUSE:
        return 0
    experiment = load(uow, EXPERIMENT, run.experiment_id)
    if experiment.paused:
        return 0
    if experiment.ended_state() is not None:
        return 0  # canceled: the cancel ends it; completed or budget spent: the searcher stops it
    return change_aggregate(uow, RUN, cmd.run_id, _resume_if_paused_for_experiment).position


def set_experiment_priority(cmd: c.SetExperimentPriority, uow: UnitOfWork) -> int:
    """Reorder an experiment's queued runs; returns the position (0 when unchanged)."""
    return change_aggregate(uow, EXPERIMENT, cmd.experiment_id, lambda e: e.set_priority(cmd.priority)).position


def add_trial(cmd: c.AddTrial, uow: UnitOfWork) -> tuple[int, bool]:
    """Create run `index` of a searched experiment; returns (position, whether it was created now).

    ExperimentRunAdded and the run's RunCreated commit together, with ids
    derived from `event_id`, so a decision re-derived after a restart adds
    nothing. A run added after the experiment was canceled (or its budget
    spent) is ended at once: the cancel did not see it. A run added while the
    experiment is paused starts PAUSED (in the same commit as its RunCreated).
    """
    experiment = load(uow, EXPERIMENT, cmd.experiment_id)
    # Built from the facts recorded at submit (upcast for older experiments): no manifest parse here.
    added, created = experiment.add_trial(cmd.index, cmd.values)
    opening: list[Message] = [created]
    ids = [uuid.uuid5(cmd.event_id, "run")]
    with uow.transaction() as tx:
        first = tx.append(
            ev.experiment_stream(cmd.experiment_id), [added], correlation_id=cmd.experiment_id, ids=[cmd.event_id]
        )
        if first.appended and experiment.paused and not experiment.cancel_requested:
            # New now (not a decision stored before): it starts paused, in its opening commit.
            opening.append(events_pb2.RunPaused(attempt=0, reason=EXPERIMENT_PAUSE))
            ids.append(uuid.uuid5(cmd.event_id, "paused"))
        tx.append(ev.run_stream(created.run_id), opening, NO_STREAM, cmd.experiment_id, ids)
    position = tx.last_position
    if first.appended and not experiment.paused and load(uow, EXPERIMENT, cmd.experiment_id).paused:
        # Paused between the load and the commit: the pause's sweep may not have seen this run.
        paused = change_aggregate(uow, RUN, created.run_id, lambda r: r.request_pause(EXPERIMENT_PAUSE))
        position = max(position, paused.position)
    if first.appended and (experiment.cancel_requested or experiment.budget_spent):
        reason = experiment.cancel_reason if experiment.cancel_requested else "budget"
        decide: Callable[[Run], list[Message]] = (
            (lambda r: [] if r.is_terminal else r.request_cancel(reason))
            if experiment.cancel_requested
            else (lambda r: r.request_stop(reason))
        )
        position = max(position, change_aggregate(uow, RUN, created.run_id, decide).position)
    return position or first.last_position, first.appended


def stop_run_early(cmd: c.StopRunEarly, uow: UnitOfWork) -> Outcome:
    """Ask a run to stop for the experiment's searcher (ends STOPPED_EARLY); nothing when it has ended."""
    stop = cmd.stop
    return change_aggregate(
        uow,
        RUN,
        cmd.run_id,
        lambda run: run.request_stop(stop.reason, stop.rung, stop.level, stop.value),
        lambda n: [cmd.event_id],
    )


def record_for_experiment(cmd: c.RecordForExperiment, uow: UnitOfWork) -> int:
    """Append a searcher's record (promotion, new best, budget spent, completion) to the experiment stream."""
    return uow.append(
        ev.experiment_stream(cmd.experiment_id), [cmd.event], correlation_id=cmd.experiment_id, ids=[cmd.event_id]
    ).last_position
