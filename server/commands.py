"""The command layer: loads an aggregate, asks the domain, appends its events.

Every decision is checked against the stream version it was made on; when
another writer got there first the command is simply made again on the new
state (optimistic concurrency), so two replicas never both apply a change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from google.protobuf.message import Message

from runyard.server.domain import events as ev
from runyard.server.domain.experiment import Experiment
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.run import Run
from runyard.server.store import ANY, NO_STREAM, ConcurrencyError, EventStore, NewEvent
from runyard.v1 import agent_pb2, events_pb2

log = structlog.get_logger(__name__)

MAX_RETRIES = 20


class NotFound(Exception):
    """An id names nothing in the log."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")
        self.kind = kind
        self.ident = ident


@dataclass(frozen=True)
class Outcome:
    """What a command appended: its events and the log position to wait for."""

    events: Sequence[Message]
    position: int


def new_events(
    messages: Sequence[Message], correlation_id: str | None, ids: Sequence[uuid.UUID] | None = None
) -> list[NewEvent]:
    out = []
    for i, msg in enumerate(messages):
        type_, data = ev.encode(msg)
        event_id = ids[i] if ids is not None else uuid.uuid4()
        out.append(NewEvent(type=type_, data=data, event_id=event_id, correlation_id=correlation_id))
    return out


class Commands:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    # -- experiments -------------------------------------------------------

    def create_experiment(
        self, account_id: str, manifest_yaml: str, code_uri: str, client_request_id: str
    ) -> tuple[str, int]:
        """Returns (experiment id, position); a repeated request id returns the first experiment."""
        manifest = parse_manifest(manifest_yaml)
        if client_request_id:
            experiment_id = ev.experiment_id_for_request(account_id, client_request_id)
        else:
            experiment_id = ev.new_experiment_id()
        stream = ev.experiment_stream(experiment_id)
        existing = self._store.read_stream(stream, limit=1)
        if existing:
            return experiment_id, existing[0].position
        created, runs = Experiment.create(
            experiment_id, account_id, manifest, manifest_yaml, code_uri, client_request_id
        )
        try:
            with self._store.transaction() as tx:
                result = tx.append(stream, new_events([created], experiment_id), NO_STREAM)
                position = result.last_position
                for run_id, run_created in runs:
                    result = tx.append(ev.run_stream(run_id), new_events([run_created], experiment_id), NO_STREAM)
                    position = result.last_position
        except ConcurrencyError:
            # The same request id raced with itself: the first one won.
            first = self._store.read_stream(stream, limit=1)
            if not first:
                raise
            return experiment_id, first[0].position
        return experiment_id, position

    def load_experiment(self, experiment_id: str) -> Experiment:
        records = self._store.read_stream(ev.experiment_stream(experiment_id))
        if not records:
            raise NotFound("experiment", experiment_id)
        return Experiment.replay(ev.decode(r.type, r.data) for r in records)

    def cancel_experiment(self, experiment_id: str, reason: str) -> tuple[list[str], int]:
        """Cancels every unfinished run; returns the ids of runs to stop on agents and the position."""
        position = 0
        for _ in range(MAX_RETRIES):
            experiment = self.load_experiment(experiment_id)
            new = [] if experiment.cancel_requested else experiment.request_cancel(reason)
            try:
                if new:
                    position = self._store.append(
                        ev.experiment_stream(experiment_id),
                        new_events(new, experiment_id),
                        experiment.version,
                    ).last_position
                break
            except ConcurrencyError:
                continue
        to_stop: list[str] = []
        for run_id in experiment.run_ids:
            run = self.load_run(run_id)
            if run.is_terminal or run.cancel_requested:
                continue
            outcome = self.update_run(
                run_id, lambda r: [] if r.is_terminal or r.cancel_requested else r.request_cancel(reason)
            )
            position = max(position, outcome.position)
            if any(isinstance(m, events_pb2.RunCancelRequested) for m in outcome.events):
                to_stop.append(run_id)
        return to_stop, position

    # -- runs --------------------------------------------------------------

    def load_run(self, run_id: str) -> Run:
        records = self._store.read_stream(ev.run_stream(run_id))
        if not records:
            raise NotFound("run", run_id)
        return Run.replay(ev.decode(r.type, r.data) for r in records)

    def update_run(
        self,
        run_id: str,
        decide: Callable[[Run], list[Message]],
        event_ids: Callable[[int], list[uuid.UUID]] | None = None,
    ) -> Outcome:
        """Make a decision on the run's current state and append it, retrying on conflicts."""
        for _ in range(MAX_RETRIES):
            run = self.load_run(run_id)
            new = decide(run)
            if not new:
                return Outcome([], 0)
            ids = event_ids(len(new)) if event_ids else None
            try:
                result = self._store.append(ev.run_stream(run_id), new_events(new, run.experiment_id, ids), run.version)
            except ConcurrencyError:
                continue
            return Outcome(new, result.last_position)
        raise ConcurrencyError(ev.run_stream(run_id), -1, -1)

    def cancel_run(self, run_id: str, reason: str) -> Outcome:
        return self.update_run(run_id, lambda run: run.request_cancel(reason))

    def assign_run(self, run_id: str, agent_id: str, gpu_ids: Sequence[str]) -> Outcome:
        return self.update_run(run_id, lambda run: run.assign(agent_id, list(gpu_ids)))

    def agent_lost(self, agent_id: str, run_ids: Sequence[str], message: str) -> int:
        position = self._store.append(
            ev.agent_stream(agent_id), new_events([events_pb2.AgentLost(message=message)], None)
        ).last_position
        for run_id in run_ids:
            outcome = self.update_run(run_id, lambda run: run.agent_lost(agent_id))
            position = max(position, outcome.position)
        return position

    # -- agent reports -------------------------------------------------------

    def apply_report(self, report: agent_pb2.AgentReport) -> int:
        """Append what an agent reported; returns the position (0 when nothing was appended).

        The report's event id makes a redelivered report a no-op; a report of
        an attempt that is no longer current raises StaleAttempt.
        """
        base = (
            uuid.UUID(report.event_id)
            if _is_uuid(report.event_id)
            else uuid.uuid5(uuid.NAMESPACE_URL, f"runyard-report:{report.agent_id}:{report.event_id}")
        )

        def ids(n: int) -> list[uuid.UUID]:
            return [base] + [uuid.uuid5(base, str(i)) for i in range(1, n)]

        body = report.WhichOneof("body")
        if body == "registered":
            registered = report.registered
            return self._store.append(
                ev.agent_stream(registered.agent_id), new_events([registered], None, ids(1))
            ).last_position
        run_id = report.run_id
        if body == "logged":
            return self._append_output(run_id, report.logged.attempt, ev.run_logs_stream(run_id), report.logged, ids(1))
        if body == "metrics":
            return self._append_output(
                run_id, report.metrics.attempt, ev.run_metrics_stream(run_id), report.metrics, ids(1)
            )
        decide: Callable[[Run], list[Message]]
        if body == "staging":
            a = report.staging.attempt
            decide = lambda run: run.report_staging(a)  # noqa: E731
        elif body == "started":
            a = report.started.attempt
            decide = lambda run: run.report_started(a)  # noqa: E731
        elif body == "uploading":
            up = report.uploading
            decide = lambda run: run.report_uploading(up.attempt, up.exit_code)  # noqa: E731
        elif body == "completed":
            done = report.completed
            decide = lambda run: run.report_completed(done.attempt, done.results_uri)  # noqa: E731
        elif body == "failed":
            f = report.failed
            decide = lambda run: run.report_failed(f.attempt, f.reason, f.exit_code, f.message)  # noqa: E731
        elif body == "canceled":
            c = report.canceled
            decide = lambda run: run.report_canceled(c.attempt, c.reason)  # noqa: E731
        else:
            log.warning("unknown report body", body=body, agent_id=report.agent_id)
            return 0
        return self.update_run(run_id, decide, ids).position

    def _append_output(self, run_id: str, attempt: int, stream: str, msg: Message, ids: list[uuid.UUID]) -> int:
        run = self.load_run(run_id)
        run.check_attempt(attempt)
        return self._store.append(stream, new_events([msg], run.experiment_id, ids), ANY).last_position


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
