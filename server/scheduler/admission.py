"""Refusing at submit what could never run, instead of queueing it forever.

An experiment's runs all ask for the same resources (they differ only in
hyperparameters), so one check covers them all: against every registered
agent that is not lost (draining ones too: they come back), and against the
account's plan. With no agent registered yet nothing is refused: agents may
still be starting, and the runs wait with "no agent is connected".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from runyard.server.domain.manifest import Manifest
from runyard.server.domain.scheduling import QueuedRun, can_ever_place, quota_refusal
from runyard.server.queries.scheduling import SchedulingReads


class RefusalKind(enum.Enum):
    #: No agent could hold the runs (FAILED_PRECONDITION: the cluster's state).
    CAPACITY = "capacity"
    #: The manifest names a GPU model no agent has (INVALID_ARGUMENT: names the field).
    UNKNOWN_MODEL = "unknown_model"
    #: The manifest names a framework version no agent offers, or its own image with no container agent
    #: (INVALID_ARGUMENT: names the field and what agents offer).
    NOT_OFFERED = "not_offered"
    #: The account's plan could never admit one run (RESOURCE_EXHAUSTED: names the limit).
    QUOTA = "quota"


@dataclass(frozen=True)
class Refusal:
    kind: RefusalKind
    message: str


def submit_refusal(reads: SchedulingReads, account_id: str, manifest: Manifest) -> Refusal | None:
    """Why no run of this (parsed) manifest could ever start for the account; None when one could."""
    res = manifest.resources
    run = QueuedRun(
        run_id="",
        account_id=account_id,
        gpus=res.gpus,
        gpu_model=res.gpu_model,
        labels=dict(res.labels),
        framework=manifest.framework.name or "python",
        framework_version=manifest.framework.version,
        image=manifest.image,
    )
    quota = quota_refusal(run, reads.account(account_id))
    if quota is not None:
        return Refusal(RefusalKind.QUOTA, quota)
    never = can_ever_place(run, reads.registered_agents())
    if never is not None:
        return Refusal(_kind_of(never), never)
    return None


def _kind_of(never: str) -> RefusalKind:
    """What kind of refusal a `can_ever_place` reason is, by the field it names."""
    if never.startswith("resources.gpu_model"):
        return RefusalKind.UNKNOWN_MODEL
    if never.startswith(("framework.version", "image")):
        return RefusalKind.NOT_OFFERED
    return RefusalKind.CAPACITY
