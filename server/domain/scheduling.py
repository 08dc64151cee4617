"""Placement policy: which queued run goes to which agent, as a pure function.

First in, first out by the position at which a run was (re)queued; each run
goes to the agent that offers its framework and has enough free slots and
GPUs, preferring the agent with the most free slots so load spreads. A run that
cannot be placed now keeps its place: runs behind it may still be placed when
they fit elsewhere, since nothing they take could have held the head run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class QueuedRun:
    run_id: str
    framework: str
    gpus: int


@dataclass
class AgentCapacity:
    agent_id: str
    free_slots: int
    free_gpu_ids: list[str]
    frameworks: frozenset[str]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    run_id: str
    agent_id: str
    gpu_ids: tuple[str, ...]


@dataclass(frozen=True)
class Waiting:
    run_id: str
    reason: str


def place(queue: Sequence[QueuedRun], agents: Sequence[AgentCapacity]) -> tuple[list[Placement], list[Waiting]]:
    """Decide placements for `queue` (already in queue order) on `agents`.

    Mutates nothing the caller passed in; returns the placements and, for every
    run left waiting, a reason a person can read.
    """
    free = [AgentCapacity(a.agent_id, a.free_slots, list(a.free_gpu_ids), a.frameworks, dict(a.labels)) for a in agents]
    placements: list[Placement] = []
    waiting: list[Waiting] = []
    for position, run in enumerate(queue):
        offering = [a for a in free if run.framework in a.frameworks]
        if not offering:
            waiting.append(Waiting(run.run_id, f"no agent offers framework {run.framework!r}"))
            continue
        fitting = [a for a in offering if a.free_slots > 0 and len(a.free_gpu_ids) >= run.gpus]
        if not fitting:
            ahead = position - len(placements)
            suffix = f", behind {ahead} queued run(s)" if ahead > 0 else ""
            what = f"{run.gpus} free GPU(s)" if run.gpus else "a free slot"
            waiting.append(Waiting(run.run_id, f"waiting for {what}{suffix}"))
            continue
        agent = max(fitting, key=lambda a: (a.free_slots, len(a.free_gpu_ids), a.agent_id))
        gpu_ids = tuple(agent.free_gpu_ids[: run.gpus])
        del agent.free_gpu_ids[: run.gpus]
        agent.free_slots -= 1
        placements.append(Placement(run.run_id, agent.agent_id, gpu_ids))
    return placements, waiting
