"""The Experiment aggregate: a manifest expanded into runs, and the cancel of them all.

An experiment's decisions are few: it is created once, a cancel may be
asked once, and it may be paused and resumed while it has not ended
(ExperimentPaused/ExperimentResumed; its runs are paused one by one after).
A plain experiment gets all its runs with its creation (so a reader never
sees it without them); a searched one (`is_searched`: early
stopping or max_parallel) starts empty and its searcher adds runs one by one
(ExperimentRunAdded), records rung decisions and bests, and ends it
(ExperimentCompleted). Run ids and specs are pure functions of the experiment
id and the manifest, so a retried create produces byte-identical events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from runyard.server.domain.command_template import format_value, render_command
from runyard.server.domain.errors import DomainError, IllegalTransition
from runyard.server.domain.experiment_facts import facts_of, manifest_of, runs_at_submit
from runyard.server.domain.ids import run_id_for
from runyard.server.domain.manifest_model import Manifest, Scalar
from runyard.server.domain.manifest_parse import MAX_PRIORITY
from runyard.server.domain.search_space import expand_trials
from runyard.v1 import common_pb2, events_pb2, facts_pb2

__all__ = ["EXPERIMENT_PAUSE", "EXPERIMENT_RESUME", "Experiment", "new_run", "run_spec", "runs_at_submit"]

#: The reason of the runs an experiment's pause pauses (RunPauseRequested/RunPaused), and of their
#: resume: an experiment's resume puts back only the runs paused for it (not those ASHA paused at a rung).
EXPERIMENT_PAUSE = "experiment paused"
EXPERIMENT_RESUME = "experiment resumed"


def _value(value: Scalar) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    return struct_pb2.Value(number_value=float(value))


_NETWORKS = {"none": common_pb2.RUN_NETWORK_NONE, "egress": common_pb2.RUN_NETWORK_EGRESS}


def run_spec(manifest: Manifest, values: Mapping[str, Scalar], code_uri: str, run_id: str) -> common_pb2.RunSpec:
    """Everything an agent needs for one run: the command rendered with this run's values."""
    return common_pb2.RunSpec(
        command=render_command(manifest.command, values),
        hyperparameters={name: _value(v) for name, v in values.items()},
        framework=common_pb2.Framework(name=manifest.framework.name, version=manifest.framework.version),
        resources=common_pb2.Resources(
            gpus=manifest.resources.gpus,
            cpus=manifest.resources.cpus,
            memory_bytes=manifest.resources.memory_bytes,
            gpu_model=manifest.resources.gpu_model,
            agent_labels=dict(manifest.resources.labels),
        ),
        code_uri=code_uri,
        data_uri=manifest.data,
        results_uri=f"{manifest.results.rstrip('/')}/{run_id}",
        metric_patterns=[common_pb2.MetricPattern(regex=p) for p in manifest.metric_patterns],
        env=dict(manifest.env),
        max_restarts=manifest.max_restarts,
        priority=manifest.priority,
        image=manifest.image,
        network=_NETWORKS[manifest.network],
        not_preemptible=not manifest.preemptible,
        preemption_grace_seconds=manifest.preemption_grace_s or 0,
    )


def new_run(
    experiment_id: str,
    account_id: str,
    manifest: Manifest,
    code_uri: str,
    index: int,
    values: Mapping[str, Scalar],
    start_from: common_pb2.Checkpoint | None = None,
) -> events_pb2.RunCreated:
    """The RunCreated of run `index` with these hyperparameter values (at submit, or when a searcher adds it).

    `start_from`: a fork's checkpoint, what the run's first attempt stages into $CHECKPOINT_DIR.
    """
    run_id = run_id_for(experiment_id, index)
    spec = run_spec(manifest, values, code_uri, run_id)
    if start_from is not None:
        spec.start_from.CopyFrom(start_from)
    return events_pb2.RunCreated(
        run_id=run_id, experiment_id=experiment_id, account_id=account_id, index=index, spec=spec
    )


#: Events the experiment's searcher records on the experiment stream.
_SEARCH_EVENTS = (
    events_pb2.ExperimentRunAdded,
    events_pb2.RunPromoted,
    events_pb2.ExperimentBestFound,
    events_pb2.ExperimentBudgetSpent,
    events_pb2.ExperimentCompleted,
)


@dataclass
class Experiment:
    """An experiment as its stream says it is; `version` is the number of events applied."""

    experiment_id: str
    account_id: str
    name: str
    manifest_yaml: str
    code_uri: str
    client_request_id: str
    run_ids: tuple[str, ...]
    #: What was decided at submit (ExperimentCreated.facts; upcast from the manifest for older events).
    facts: facts_pb2.ExperimentFacts = field(default_factory=facts_pb2.ExperimentFacts)
    cancel_requested: bool = False
    cancel_reason: str = ""
    #: Set by an admin after creation (ExperimentPrioritySet); None while the manifest's priority holds.
    priority: int | None = None
    #: Why the experiment's budget ended it (ExperimentBudgetSpent); "" while it lasts.
    budget_spent: str = ""
    #: Why the searcher ended the experiment (ExperimentCompleted); "" while it searches.
    completed: str = ""
    #: Paused (ExperimentPaused) and not resumed since: its runs wait PAUSED, new trials start paused.
    paused: bool = False
    pause_reason: str = ""
    version: int = 0

    @staticmethod
    def create(
        experiment_id: str,
        account_id: str,
        manifest: Manifest,
        manifest_yaml: str,
        code_uri: str,
        client_request_id: str,
        start_from: common_pb2.Checkpoint | None = None,
    ) -> tuple[events_pb2.ExperimentCreated, list[tuple[str, events_pb2.RunCreated]]]:
        """The experiment's opening event and, per run in index order, its id and RunCreated.

        The opening event records the facts the manifest decides (`experiment_facts`),
        so nothing after the submit parses `manifest_yaml` again; a fork's checkpoint
        (`start_from`, resolved by the caller) is one of them, for trials added later.
        """
        runs: list[tuple[str, events_pb2.RunCreated]] = []
        facts = facts_of(manifest)
        if start_from is not None:
            facts.start_from.CopyFrom(start_from)
        trials = [] if facts.searched else expand_trials(manifest)
        for index, values in enumerate(trials):
            run_id = run_id_for(experiment_id, index)
            created = new_run(experiment_id, account_id, manifest, code_uri, index, values, start_from)
            runs.append((run_id, created))
        opened = events_pb2.ExperimentCreated(
            experiment_id=experiment_id,
            account_id=account_id,
            name=manifest.name,
            manifest_yaml=manifest_yaml,
            code_uri=code_uri,
            client_request_id=client_request_id,
            run_ids=[run_id for run_id, _ in runs],
            facts=facts,
        )
        return opened, runs

    @classmethod
    def replay(cls, events: Iterable[Message]) -> Experiment:
        stream = iter(events)
        first = next(stream, None)
        if not isinstance(first, events_pb2.ExperimentCreated):
            opened = "nothing" if first is None else first.DESCRIPTOR.name
            raise DomainError(f"an experiment stream opens with ExperimentCreated, not {opened}")
        experiment = cls(
            experiment_id=first.experiment_id,
            account_id=first.account_id,
            name=first.name,
            manifest_yaml=first.manifest_yaml,
            code_uri=first.code_uri,
            client_request_id=first.client_request_id,
            run_ids=tuple(first.run_ids),
            facts=first.facts,
            version=1,
        )
        for event in stream:
            experiment.apply(event)
        return experiment

    def apply(self, event: Message) -> None:
        if isinstance(event, events_pb2.ExperimentPrioritySet):
            self.priority = event.priority
            self.version += 1
            return
        if isinstance(event, events_pb2.ExperimentPaused | events_pb2.ExperimentResumed):
            self.paused = isinstance(event, events_pb2.ExperimentPaused)
            self.pause_reason = event.reason if self.paused else ""
            self.version += 1
            return
        if isinstance(event, _SEARCH_EVENTS):
            if isinstance(event, events_pb2.ExperimentRunAdded):
                self.run_ids = (*self.run_ids, event.run_id)
            elif isinstance(event, events_pb2.ExperimentBudgetSpent):
                self.budget_spent = event.reason
            elif isinstance(event, events_pb2.ExperimentCompleted):
                self.completed = event.reason
            self.version += 1
            return
        if not isinstance(event, events_pb2.ExperimentCancelRequested):
            raise DomainError(
                f"experiment {self.experiment_id}: {event.DESCRIPTOR.name} is not an experiment event here"
            )
        if self.cancel_requested:
            raise IllegalTransition(self.experiment_id, "CANCEL_REQUESTED", "cancel", kind="experiment")
        self.cancel_requested = True
        self.cancel_reason = event.reason
        self.version += 1

    @property
    def manifest(self) -> Manifest:
        """The validated manifest as recorded at submit (no YAML parsed); DomainError for an old, unparsable one."""
        manifest = manifest_of(self.name, self.facts)
        if manifest is None:
            raise DomainError(f"experiment {self.experiment_id}: its stored manifest no longer validates")
        return manifest

    def add_trial(
        self, index: int, values: Mapping[str, Scalar]
    ) -> tuple[events_pb2.ExperimentRunAdded, events_pb2.RunCreated]:
        """A searcher's trial `index`: the experiment's ExperimentRunAdded and the new run's RunCreated.

        Built from the recorded facts; the caller appends both in one transaction.
        """
        start_from = self.facts.start_from if self.facts.HasField("start_from") else None
        created = new_run(self.experiment_id, self.account_id, self.manifest, self.code_uri, index, values, start_from)
        shown = {name: format_value(value) for name, value in values.items()}
        added = events_pb2.ExperimentRunAdded(run_id=created.run_id, index=index, hyperparameters=shown)
        return added, created

    def set_priority(self, priority: int) -> list[Message]:
        """Reorder the experiment's queued runs; the same priority again records nothing."""
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority: must be between {-MAX_PRIORITY} and {MAX_PRIORITY}, as in a manifest")
        if self.priority == priority:
            return []
        return [events_pb2.ExperimentPrioritySet(priority=priority)]

    def request_cancel(self, reason: str = "") -> list[Message]:
        """Record that every unfinished run is to stop; the runs are canceled one by one after."""
        if self.cancel_requested:
            raise IllegalTransition(self.experiment_id, "CANCEL_REQUESTED", "cancel", kind="experiment")
        return [events_pb2.ExperimentCancelRequested(reason=reason)]

    def ended_state(self, runs_ended: bool = False) -> str | None:
        """The name of the state that ends the experiment (None while it goes on).

        `runs_ended`: every run of a plain (unsearched) experiment has ended, which
        only the runs' streams know.
        """
        if self.cancel_requested:
            return "CANCEL_REQUESTED"
        if self.completed:
            return "COMPLETED"
        if self.budget_spent:
            return "BUDGET_SPENT"
        if runs_ended and not self.facts.searched:
            return "ENDED"
        return None

    def pause(self, reason: str = "", runs_ended: bool = False) -> list[Message]:
        """Hold the experiment: its runs are paused after (by the handler); paused again records nothing."""
        ended = self.ended_state(runs_ended)
        if ended is not None:
            raise IllegalTransition(self.experiment_id, ended, "pause", kind="experiment")
        if self.paused:
            return []
        return [events_pb2.ExperimentPaused(reason=reason)]

    def resume(self, reason: str = "", runs_ended: bool = False) -> list[Message]:
        """Let the experiment's runs queue again; nothing for an experiment that is not paused."""
        ended = self.ended_state(runs_ended)
        if ended is not None:
            raise IllegalTransition(self.experiment_id, ended, "resume", kind="experiment")
        if not self.paused:
            return []
        return [events_pb2.ExperimentResumed(reason=reason)]
