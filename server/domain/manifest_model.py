"""The experiment manifest as validated values: what a parsed manifest means.

Everything here is already checked by `manifest_parse`, so code downstream
(expanding trials, building run specs) never re-validates. Mappings keep the
order of the YAML file: run order and placeholder order follow what the user wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

#: A hyperparameter value: what a command placeholder renders and a RunSpec carries.
Scalar: TypeAlias = str | int | float | bool

FRAMEWORKS = ("pytorch", "tensorflow", "python")
SEARCH_METHODS = ("single", "grid", "list", "random", "tpe")
GOALS = ("maximize", "minimize")
EARLY_STOPPING = ("none", "asha")
#: What a run's container may reach: nothing (the default), or outbound connections for runs that download.
NETWORKS = ("none", "egress")
#: No experiment expands into more runs than this, whatever max_runs says.
MAX_RUNS_PER_EXPERIMENT = 1000

SearchMethod = Literal["single", "grid", "list", "random", "tpe"]
Network = Literal["none", "egress"]
Goal = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Framework:
    name: str = "python"
    version: str = ""


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: int = 1
    #: 0 means no limit was asked for.
    memory_bytes: int = 0
    #: GPU model the runs need ("H100", matched on the agent's short model or full name); "" for any.
    gpu_model: str = ""
    #: Agent labels the runs need, all of them (e.g. {"pool": "research"}).
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Const:
    value: Scalar


@dataclass(frozen=True)
class IntRange:
    """Integers min, min+step, ... up to max inclusive."""

    min: int
    max: int
    step: int = 1


@dataclass(frozen=True)
class DoubleRange:
    """Uniform over [min, max]; `count` evenly spaced points (ends included) for a grid."""

    min: float
    max: float
    count: int | None = None


@dataclass(frozen=True)
class LogRange:
    """Log-uniform over [min, max] (min > 0); `count` log-spaced points for a grid."""

    min: float
    max: float
    base: float = 10.0
    count: int | None = None


@dataclass(frozen=True)
class Categorical:
    values: tuple[Scalar, ...]


Hyperparameter: TypeAlias = Const | IntRange | DoubleRange | LogRange | Categorical


@dataclass(frozen=True)
class AshaSettings:
    """ASHA's rung ladder (`search.asha`): rungs at min_resource * reduction_factor**k time units."""

    min_resource: int = 1
    reduction_factor: int = 3
    #: Time units a run trains at most; no rung at or above it. None: no bound.
    max_resource: int | None = None
    #: What the search metric's step counts ("epochs" or "steps"); for reading only.
    time_unit: str = "epochs"
    #: "stop": runs that miss a rung's cut are stopped; "pause": every run pauses at its rung (with its
    #: checkpoint) and the promoted ones resume (ASHA's Algorithm 2). Needs max_resource.
    mode: str = "stop"


@dataclass(frozen=True)
class Search:
    method: SearchMethod = "single"
    #: Cap on the number of runs; for random and tpe, the number of runs sampled.
    max_runs: int | None = None
    #: At most this many runs of the experiment hold slots at once (None: no cap).
    max_parallel: int | None = None
    #: The explicit assignments of method "list", with const hyperparameters filled in.
    runs: tuple[Mapping[str, Scalar], ...] = ()
    seed: int = 0
    metric: str | None = None
    goal: Goal | None = None
    early_stopping: str = "none"
    asha: AshaSettings = field(default_factory=AshaSettings)
    #: Budget: the experiment stops starting runs and stops those running this long after submit.
    max_time_s: float | None = None
    #: Budget: the same once its runs have held this many GPU-hours (billed time, all attempts).
    max_gpu_hours: float | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    command: str
    results: str
    framework: Framework = field(default_factory=Framework)
    resources: Resources = field(default_factory=Resources)
    #: Object storage prefix staged into DATA_DIR; "" for none.
    data: str = ""
    hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)
    search: Search = field(default_factory=Search)
    metric_patterns: tuple[str, ...] = ()
    max_restarts: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    #: Higher runs first within the account's queue.
    priority: int = 0
    #: The user's own image reference; "" runs the framework's image. Needs a container agent.
    image: str = ""
    network: Network = "none"
    #: False: the scheduler never stops its runs to give their GPUs to others (RunSpec.not_preemptible).
    preemptible: bool = True
    #: Seconds between SIGTERM and SIGKILL when a run is preempted; None: the control plane's default (60 s).
    preemption_grace_s: int | None = None
    #: Fork: each run starts from this run's latest checkpoint (same account); "" starts afresh.
    from_run: str = ""
