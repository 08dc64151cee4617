"""The command layer: loads an aggregate, asks the domain, appends its events.

Every decision is checked against the stream version it was made on; when
another writer got there first the command is simply made again on the new
state (optimistic concurrency), so two replicas never both apply a change.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import structlog
from google.protobuf.message import Message

from runyard.server.domain import events as ev
from runyard.server.domain.account import Account, ApiKey, account_stream, api_key_stream, hash_secret
from runyard.server.domain.command import format_value
from runyard.server.domain.errors import DomainError
from runyard.server.domain.experiment import Experiment, new_run
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.manifest_model import Scalar
from runyard.server.domain.run import Run
from runyard.server.domain.searchers import StopRun as StopDecision
from runyard.server.store import ANY, NO_STREAM, ConcurrencyError, EventStore, ExpectedVersion, NewEvent
from runyard.v1 import agent_pb2, common_pb2, events_pb2

log = structlog.get_logger(__name__)

MAX_RETRIES = 20


class NotFound(Exception):
    """An id names nothing in the log."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(Exception):
    """A create names an id that is taken (ALREADY_EXISTS)."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} already exists")
        self.kind = kind
        self.ident = ident


#: Every API key secret starts with this, so a leaked one is easy to spot (secret scanners, logs).
SECRET_PREFIX = "ry_"


def new_secret() -> str:
    """A bearer secret: 256 random bits, URL-safe; only its SHA-256 is ever stored."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key-" + secrets.token_hex(6)


class CreatedKey(NamedTuple):
    """A new API key: its id, its secret (shown once, never stored) and the log position."""

    key_id: str
    secret: str
    position: int


class FirstKeys(NamedTuple):
    """What a fresh installation's bootstrap created."""

    account_id: str
    admin_key: str
    agent_key: str
    position: int


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

    # -- what an experiment's searcher decided (runyard.server.search) --------------

    def add_trial(
        self, experiment_id: str, index: int, values: Mapping[str, Scalar], event_id: uuid.UUID
    ) -> tuple[int, bool]:
        """Create run `index` of a searched experiment; returns (position, whether it was created now).

        ExperimentRunAdded and the run's RunCreated commit together, with ids
        derived from `event_id`, so a decision re-derived after a restart adds
        nothing. A run added after the experiment was canceled (or its budget
        spent) is ended at once: the cancel did not see it.
        """
        experiment = self.load_experiment(experiment_id)
        manifest = parse_manifest(experiment.manifest_yaml, stored=True)
        created = new_run(experiment_id, experiment.account_id, manifest, experiment.code_uri, index, values)
        shown = {name: format_value(value) for name, value in values.items()}
        added = events_pb2.ExperimentRunAdded(run_id=created.run_id, index=index, hyperparameters=shown)
        with self._store.transaction() as tx:
            first = tx.append(ev.experiment_stream(experiment_id), new_events([added], experiment_id, [event_id]))
            tx.append(
                ev.run_stream(created.run_id),
                new_events([created], experiment_id, [uuid.uuid5(event_id, "run")]),
                NO_STREAM,
            )
        position = tx.last_position
        if first.appended and (experiment.cancel_requested or experiment.budget_spent):
            reason = experiment.cancel_reason if experiment.cancel_requested else "budget"
            decide: Callable[[Run], list[Message]] = (
                (lambda r: [] if r.is_terminal else r.request_cancel(reason))
                if experiment.cancel_requested
                else (lambda r: r.request_stop(reason))
            )
            position = max(position, self.update_run(created.run_id, decide).position)
        return position or first.last_position, first.appended

    def stop_run_early(self, run_id: str, stop: StopDecision, event_id: uuid.UUID) -> Outcome:
        """Ask a run to stop for the experiment's searcher (ends STOPPED_EARLY); nothing when it has ended."""
        return self.update_run(
            run_id, lambda run: run.request_stop(stop.reason, stop.rung, stop.level, stop.value), lambda n: [event_id]
        )

    def record_for_experiment(self, experiment_id: str, msg: Message, event_id: uuid.UUID) -> int:
        """Append a searcher's record (promotion, new best, budget spent, completion) to the experiment stream."""
        return self._store.append(
            ev.experiment_stream(experiment_id), new_events([msg], experiment_id, [event_id])
        ).last_position

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

    def assign_run(self, run_id: str, agent_id: str, gpu_ids: Sequence[str], gpu_model: str = "") -> Outcome:
        return self.update_run(run_id, lambda run: run.assign(agent_id, list(gpu_ids), gpu_model))

    def assign_runs(self, placements: Sequence[tuple[str, str, Sequence[str], str]]) -> list[Outcome]:
        """Assign many runs, (run id, agent id, gpu ids, gpu model) each, in one transaction.

        The log takes one writer at a time, so a scheduling cycle's assignments
        commit once instead of once each. All or nothing: if any run moved on
        meanwhile this raises (ConcurrencyError, DomainError) and nothing is
        stored; the caller then assigns one by one.
        """
        decided = []
        for run_id, agent_id, gpu_ids, gpu_model in placements:
            run = self.load_run(run_id)
            decided.append((run, run.assign(agent_id, list(gpu_ids), gpu_model)))
        outcomes = []
        with self._store.transaction() as tx:
            for run, new in decided:
                result = tx.append(ev.run_stream(run.run_id), new_events(new, run.experiment_id), run.version)
                outcomes.append(Outcome(new, result.last_position))
        return outcomes

    def expire_attempt(self, agent_id: str, run_id: str, attempt: int, message: str) -> int:
        """The attempt's lease ended without its end being reported: end it as AGENT_LOST (see the scheduler)."""
        return self.update_run(run_id, lambda run: run.agent_lost(agent_id, message, attempt)).position

    def agent_lost(self, agent_id: str, run_ids: Sequence[str], message: str) -> int:
        position = self._store.append(
            ev.agent_stream(agent_id), new_events([events_pb2.AgentLost(message=message)], None)
        ).last_position
        for run_id in run_ids:
            outcome = self.update_run(run_id, lambda run: run.agent_lost(agent_id))
            position = max(position, outcome.position)
        return position

    # -- accounts and API keys ---------------------------------------------------

    def create_account(
        self,
        account_id: str,
        name: str = "",
        gpu_quota: int = 1,
        max_queued_runs: int = 0,
        run_quota: int = 0,
        storage_prefixes: Sequence[str] = (),
    ) -> int:
        """Open an account; the stream must not exist, so a taken id is AlreadyExists, never a merge."""
        new = Account.create(account_id, name, gpu_quota, max_queued_runs, run_quota, storage_prefixes)
        try:
            return self._store.append(account_stream(account_id), new_events(new, None), NO_STREAM).last_position
        except ConcurrencyError:
            raise AlreadyExists("account", account_id) from None

    def load_account(self, account_id: str) -> Account:
        records = self._store.read_stream(account_stream(account_id))
        if not records:
            raise NotFound("account", account_id)
        return Account.replay(ev.decode(r.type, r.data) for r in records)

    def set_quota(self, account_id: str, gpu_quota: int, max_queued_runs: int = 0, run_quota: int = 0) -> int:
        """Change an account's plan; returns the position (0 when the plan was already that)."""
        return self._change_account(
            account_id, lambda account: account.set_quota(gpu_quota, max_queued_runs, run_quota)
        )

    def set_account_storage(self, account_id: str, allow: Sequence[str], revoke: Sequence[str]) -> int:
        """Grant and revoke an account's storage prefixes; returns the position (0 when nothing changed)."""
        return self._change_account(account_id, lambda account: account.set_storage(allow, revoke))

    def _change_account(self, account_id: str, change: Callable[[Account], list[Message]]) -> int:
        """Apply `change` to the account's latest state, retrying on a concurrent write; 0 when it records nothing."""
        for _ in range(MAX_RETRIES):
            account = self.load_account(account_id)
            new = change(account)
            if not new:
                return 0
            try:
                return self._store.append(
                    account_stream(account_id), new_events(new, None), account.version
                ).last_position
            except ConcurrencyError:
                continue
        raise ConcurrencyError(account_stream(account_id), -1, -1)

    def create_api_key(
        self,
        account_id: str,
        role: int = common_pb2.ROLE_USER,
        name: str = "",
        agent_id: str = "",
        nats_public_key: str = "",
    ) -> CreatedKey:
        """A new key of an existing account; the secret is returned here and nowhere else, ever."""
        if self._store.stream_version(account_stream(account_id)) == 0:
            raise NotFound("account", account_id)
        secret = new_secret()
        key_id = new_key_id()
        new = ApiKey.create(key_id, account_id, role, hash_secret(secret), name, agent_id, nats_public_key)
        position = self._store.append(api_key_stream(key_id), new_events(new, None), NO_STREAM).last_position
        return CreatedKey(key_id, secret, position)

    def load_api_key(self, key_id: str) -> ApiKey:
        records = self._store.read_stream(api_key_stream(key_id))
        if not records:
            raise NotFound("API key", key_id)
        return ApiKey.replay(ev.decode(r.type, r.data) for r in records)

    def revoke_api_key(self, key_id: str, reason: str = "") -> int:
        """Disable a key; returns the position (0 when it was revoked already)."""
        for _ in range(MAX_RETRIES):
            key = self.load_api_key(key_id)
            new = key.revoke(reason)
            if not new:
                return 0
            try:
                return self._store.append(api_key_stream(key_id), new_events(new, None), key.version).last_position
            except ConcurrencyError:
                continue
        raise ConcurrencyError(api_key_stream(key_id), -1, -1)

    def bootstrap_first_account(
        self,
        account_id: str,
        gpu_quota: int,
        run_quota: int = 0,
        staged: Callable[[FirstKeys], None] | None = None,
        agent: str = "agent",
        storage_prefixes: Sequence[str] = (),
    ) -> FirstKeys | None:
        """Create the first account with an admin key and an agent key for `agent`, or None if another replica did.

        Everything goes in one transaction whose account append expects NO_STREAM: of
        several replicas starting together exactly one commits, the others roll back
        whole (their keys included). `staged` runs inside the transaction, after the
        appends and before the commit, so the caller can put the secrets somewhere
        safe before they become valid.
        """
        admin_key, agent_key = new_secret(), new_secret()
        admin_id, agent_id = new_key_id(), new_key_id()
        account = Account.create(account_id, account_id, gpu_quota, 0, run_quota, storage_prefixes)
        admin = ApiKey.create(admin_id, account_id, common_pb2.ROLE_ADMIN, hash_secret(admin_key), "bootstrap admin")
        # Bound to one agent id (`runyard server --bootstrap-agent-id`, default the host name).
        agent_key_events = ApiKey.create(
            agent_id, account_id, common_pb2.ROLE_AGENT, hash_secret(agent_key), f"bootstrap agent {agent}", agent
        )
        try:
            with self._store.transaction() as tx:
                tx.append(account_stream(account_id), new_events(account, None), NO_STREAM)
                tx.append(api_key_stream(admin_id), new_events(admin, None), NO_STREAM)
                position = tx.append(
                    api_key_stream(agent_id), new_events(agent_key_events, None), NO_STREAM
                ).last_position
                keys = FirstKeys(account_id, admin_key, agent_key, position)
                if staged is not None:
                    staged(keys)
        except ConcurrencyError:
            return None
        return keys

    # -- operations --------------------------------------------------------------

    def set_experiment_priority(self, experiment_id: str, priority: int) -> int:
        """Reorder an experiment's queued runs; returns the position (0 when unchanged)."""
        for _ in range(MAX_RETRIES):
            experiment = self.load_experiment(experiment_id)
            new = experiment.set_priority(priority)
            if not new:
                return 0
            try:
                return self._store.append(
                    ev.experiment_stream(experiment_id), new_events(new, experiment_id), experiment.version
                ).last_position
            except ConcurrencyError:
                continue
        raise ConcurrencyError(ev.experiment_stream(experiment_id), -1, -1)

    def drain_agent(self, agent_id: str, undrain: bool = False, reason: str = "") -> int:
        """Stop (or resume) giving the agent new runs; its current runs go on.

        Returns the position, or 0 when the agent already was in that state.
        """
        stream = ev.agent_stream(agent_id)
        for _ in range(MAX_RETRIES):
            records = self._store.read_stream(stream)
            if not records:
                raise NotFound("agent", agent_id)
            draining = False
            for record in records:
                if record.type == ev.event_type(events_pb2.AgentDrainRequested()):
                    draining = True
                elif record.type == ev.event_type(events_pb2.AgentDrainCleared()):
                    draining = False
            if draining == (not undrain):
                return 0
            new: Message = events_pb2.AgentDrainCleared() if undrain else events_pb2.AgentDrainRequested(reason=reason)
            try:
                return self._store.append(stream, new_events([new], None), records[-1].version).last_position
            except ConcurrencyError:
                continue
        raise ConcurrencyError(stream, -1, -1)

    # -- agent reports -------------------------------------------------------

    def apply_report(self, report: agent_pb2.AgentReport) -> int:
        """Append what an agent reported; returns the position (0 when nothing was appended).

        The report's event id makes a redelivered report a no-op; a report of
        an attempt that is no longer current raises StaleAttempt.
        """
        ids = _report_ids(report)
        body = report.WhichOneof("body")
        if body == "registered":
            registered = report.registered
            return self._store.append(
                ev.agent_stream(registered.agent_id), new_events([registered], None, ids(1))
            ).last_position
        run_id = report.run_id
        output = _output(report)
        if output is not None:
            stream, attempt, msg = output
            return self._append_output(run_id, attempt, stream, msg, ids(1), report.agent_id)
        decide = _decision(report)
        if decide is None:
            log.warning("unknown report body", body=body, agent_id=report.agent_id)
            return 0
        reporter = report.agent_id

        def held_by_reporter(run: Run) -> list[Message]:
            _check_holder(run, reporter)
            return decide(run)

        return self.update_run(run_id, held_by_reporter, ids).position

    def apply_reports(self, reports: Sequence[agent_pb2.AgentReport]) -> int:
        """Append several reports of one run, in order, in one transaction; returns the last position.

        What `apply_report` does for each, decided on the run as the earlier
        ones leave it, then stored with one commit: a run's end (uploading,
        its last output, completed) costs one turn of the log's write lock
        instead of three. Any report the run refuses raises before anything is
        stored, so the caller can fall back to one report at a time and treat
        each on its own; a concurrent change of the run raises ConcurrencyError.
        """
        run_ids = {r.run_id for r in reports}
        if len(run_ids) != 1 or not reports[0].run_id:
            raise ValueError("apply_reports takes reports of one run")
        run = self.load_run(reports[0].run_id)
        steps: list[tuple[str, list[NewEvent], ExpectedVersion]] = []
        for report in reports:
            ids = _report_ids(report)
            _check_holder(run, report.agent_id)
            output = _output(report)
            if output is not None:
                stream, attempt, msg = output
                run.check_attempt(attempt)
                steps.append((stream, new_events([msg], run.experiment_id, ids(1)), ANY))
                continue
            decide = _decision(report)
            if decide is None:
                raise DomainError(f"unknown report body {report.WhichOneof('body')!r}")
            new = decide(run)
            if not new:
                continue
            steps.append((ev.run_stream(run.run_id), new_events(new, run.experiment_id, ids(len(new))), run.version))
            for msg in new:
                run.apply(msg)
        with self._store.transaction() as tx:
            for stream, events, expected in steps:
                tx.append(stream, events, expected)
        return tx.last_position

    def _append_output(
        self, run_id: str, attempt: int, stream: str, msg: Message, ids: list[uuid.UUID], agent_id: str
    ) -> int:
        run = self.load_run(run_id)
        _check_holder(run, agent_id)
        run.check_attempt(attempt)
        return self._store.append(stream, new_events([msg], run.experiment_id, ids), ANY).last_position


def _report_ids(report: agent_pb2.AgentReport) -> Callable[[int], list[uuid.UUID]]:
    """The event ids of what a report records: derived from its id, so a redelivery stores nothing new."""
    base = (
        uuid.UUID(report.event_id)
        if _is_uuid(report.event_id)
        else uuid.uuid5(uuid.NAMESPACE_URL, f"runyard-report:{report.agent_id}:{report.event_id}")
    )
    return lambda n: [base] + [uuid.uuid5(base, str(i)) for i in range(1, n)]


def _output(report: agent_pb2.AgentReport) -> tuple[str, int, Message] | None:
    """(stream, attempt, event) of a report of a run's output, or None for a transition."""
    body = report.WhichOneof("body")
    if body not in ("logged", "metrics"):
        return None
    msg = report.logged if body == "logged" else report.metrics
    # Output is filed under the report's run: a body naming another run is refused, never filed there.
    if msg.run_id and msg.run_id != report.run_id:
        raise DomainError(f"a {body} report of run {report.run_id!r} names run {msg.run_id!r} in its body")
    msg.run_id = report.run_id
    stream = ev.run_logs_stream(report.run_id) if body == "logged" else ev.run_metrics_stream(report.run_id)
    return stream, msg.attempt, msg


def _decision(report: agent_pb2.AgentReport) -> Callable[[Run], list[Message]] | None:
    """The run command a transition report stands for (None for a body this server does not know)."""
    body = report.WhichOneof("body")
    if body == "staging":
        a = report.staging.attempt
        return lambda run: run.report_staging(a)
    if body == "started":
        a = report.started.attempt
        return lambda run: run.report_started(a)
    if body == "uploading":
        up = report.uploading
        return lambda run: run.report_uploading(up.attempt, up.exit_code)
    if body == "completed":
        done = report.completed
        return lambda run: run.report_completed(done.attempt, done.results_uri)
    if body == "failed":
        f = report.failed
        return lambda run: run.report_failed(f.attempt, f.reason, f.exit_code, f.message)
    if body == "canceled":
        c = report.canceled
        return lambda run: run.report_canceled(c.attempt, c.reason)
    return None


def _check_holder(run: Run, agent_id: str) -> None:
    """An agent reports only on runs it was given: another agent's key cannot move them."""
    if run.agent_id != agent_id:
        holder = f"agent {run.agent_id}" if run.agent_id else "no agent"
        raise DomainError(f"run {run.run_id} is held by {holder}, not by agent {agent_id}")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
