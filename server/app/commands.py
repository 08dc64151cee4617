"""What a caller asks the control plane to do: one small frozen dataclass per use case.

The adapters (gRPC servicers, ingest, the scheduler, the experiment driver)
build these from what they received; `runyard.server.app.bus.MessageBus`
runs the one handler each names.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf.message import Message

from runyard.server.domain.manifest_model import Scalar
from runyard.server.domain.searchers import StopRun as StopDecision
from runyard.v1 import agent_pb2, common_pb2

# -- experiments ---------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitExperiment:
    """Create an experiment and its runs; a repeated client request id gets the first experiment."""

    account_id: str
    manifest_yaml: str
    code_uri: str = ""
    client_request_id: str = ""
    #: Fork: overrides the manifest's `from_run` ("" keeps it).
    from_run: str = ""


@dataclass(frozen=True)
class CancelExperiment:
    experiment_id: str
    reason: str


@dataclass(frozen=True)
class PauseExperiment:
    """Hold the experiment: queued runs pause at once, runs on agents stop with a last checkpoint."""

    experiment_id: str
    reason: str = ""


@dataclass(frozen=True)
class ResumeExperiment:
    """Put the experiment's paused runs back in the queue (each resumes from its latest checkpoint)."""

    experiment_id: str
    reason: str = ""


@dataclass(frozen=True)
class SettlePausedRun:
    """A run just paused for its experiment: resume it at once if the experiment was resumed meanwhile."""

    run_id: str


@dataclass(frozen=True)
class SetExperimentPriority:
    experiment_id: str
    priority: int


# -- what an experiment's searcher decided (runyard.server.search) -------------------


@dataclass(frozen=True)
class AddTrial:
    """Run `index` of a searched experiment, with ids derived from `event_id` (a re-derived decision adds nothing)."""

    experiment_id: str
    index: int
    values: Mapping[str, Scalar]
    event_id: uuid.UUID


@dataclass(frozen=True)
class StopRunEarly:
    run_id: str
    stop: StopDecision
    event_id: uuid.UUID


@dataclass(frozen=True)
class PauseRun:
    """Hold a run PAUSED with its checkpoint (at once from the queue, else once its agent stopped it).

    `rung` > 0: ASHA paused it at a rung, waiting for a promotion to rung `rung`. With `event_id` (a
    searcher's decision), a re-derived decision records nothing twice.
    """

    run_id: str
    reason: str
    rung: int = 0
    event_id: uuid.UUID | None = None


@dataclass(frozen=True)
class ResumeRun:
    """Put a paused run back in the queue; its next attempt starts from its latest checkpoint.

    `rung` > 0: ASHA promoted it to that rung. `event_id` as for PauseRun.
    """

    run_id: str
    reason: str
    rung: int = 0
    event_id: uuid.UUID | None = None


@dataclass(frozen=True)
class RecordForExperiment:
    """A searcher's record (promotion, new best, budget spent, completion) on the experiment stream."""

    experiment_id: str
    event: Message
    event_id: uuid.UUID


# -- runs and agents ---------------------------------------------------------------


@dataclass(frozen=True)
class CancelRun:
    run_id: str
    reason: str


@dataclass(frozen=True)
class AssignRun:
    run_id: str
    agent_id: str
    gpu_ids: Sequence[str]
    gpu_model: str = ""


@dataclass(frozen=True)
class PreemptRun:
    """The scheduler takes the run's GPUs for `by_run_id` (rule "fair-share" or "priority"): its agent stops it."""

    run_id: str
    reason: str
    by_run_id: str
    rule: str
    grace_seconds: int


@dataclass(frozen=True)
class AssignRuns:
    """A scheduling cycle's placements, all or nothing in one transaction."""

    placements: Sequence[AssignRun]


@dataclass(frozen=True)
class ExpireAttempt:
    """The attempt's lease ended without its end being reported: end it as AGENT_LOST."""

    agent_id: str
    run_id: str
    attempt: int
    message: str


@dataclass(frozen=True)
class DeclareAgentLost:
    agent_id: str
    run_ids: Sequence[str]
    message: str


@dataclass(frozen=True)
class DrainAgent:
    """Stop (or, with `undrain`, resume) giving the agent new runs; its current runs go on."""

    agent_id: str
    undrain: bool = False
    reason: str = ""


# -- agent reports -----------------------------------------------------------------


@dataclass(frozen=True)
class ApplyAgentReport:
    report: agent_pb2.AgentReport


@dataclass(frozen=True)
class ApplyAgentReports:
    """Several reports of one run, in order, decided together and stored with one commit."""

    reports: Sequence[agent_pb2.AgentReport]


# -- accounts and API keys -----------------------------------------------------------


@dataclass(frozen=True)
class CreateAccount:
    account_id: str
    name: str = ""
    gpu_quota: int = 1
    max_queued_runs: int = 0
    run_quota: int = 0
    storage_prefixes: Sequence[str] = ()


@dataclass(frozen=True)
class SetQuota:
    account_id: str
    gpu_quota: int
    max_queued_runs: int = 0
    run_quota: int = 0


@dataclass(frozen=True)
class SetAccountPreemption:
    """Allow or forbid the scheduler to preempt the account's runs."""

    account_id: str
    preemptible: bool


@dataclass(frozen=True)
class SetAccountStorage:
    account_id: str
    allow: Sequence[str] = ()
    revoke: Sequence[str] = ()


@dataclass(frozen=True)
class CreateApiKey:
    account_id: str
    role: int = common_pb2.ROLE_USER
    name: str = ""
    agent_id: str = ""
    nats_public_key: str = ""


@dataclass(frozen=True)
class RevokeApiKey:
    key_id: str
    reason: str = ""


class FirstKeys(NamedTuple):
    """What a fresh installation's bootstrap created."""

    account_id: str
    admin_key: str
    agent_key: str
    position: int


@dataclass(frozen=True)
class BootstrapFirstAccount:
    """The first account with an admin key and an agent key for `agent`; None when another replica made it.

    `staged` runs inside the transaction, after the appends and before the
    commit, so the caller can put the secrets somewhere safe before they
    become valid.
    """

    account_id: str
    gpu_quota: int
    run_quota: int = 0
    staged: Callable[[FirstKeys], None] | None = field(default=None, compare=False)
    agent: str = "agent"
    storage_prefixes: Sequence[str] = ()


Command = (
    SubmitExperiment
    | CancelExperiment
    | PauseExperiment
    | ResumeExperiment
    | SettlePausedRun
    | SetExperimentPriority
    | AddTrial
    | StopRunEarly
    | PauseRun
    | ResumeRun
    | RecordForExperiment
    | CancelRun
    | AssignRun
    | AssignRuns
    | PreemptRun
    | ExpireAttempt
    | DeclareAgentLost
    | DrainAgent
    | ApplyAgentReport
    | ApplyAgentReports
    | CreateAccount
    | SetQuota
    | SetAccountPreemption
    | SetAccountStorage
    | CreateApiKey
    | RevokeApiKey
    | BootstrapFirstAccount
)
