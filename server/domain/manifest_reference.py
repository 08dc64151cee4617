"""What each manifest field means, for people: the source of docs/manifest.md.

The validator (`manifest_parse`) decides which fields exist and `manifest_model` holds
their defaults; this module only adds the words and an example per field, and takes
the field lists, choices, limits and defaults from those two modules. A unit test
checks that every field the validator accepts is described here (and nothing else),
and that every example passes the validator, so the reference cannot drift from the
code. `scripts/gen_docs.py` renders it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from runyard.server.domain import manifest_parse as mp
from runyard.server.domain.manifest_model import (
    EARLY_STOPPING,
    FRAMEWORKS,
    GOALS,
    MAX_RUNS_PER_EXPERIMENT,
    NETWORKS,
    SEARCH_METHODS,
    AshaSettings,
    Framework,
    LogRange,
    Manifest,
    Resources,
    Search,
)

REQUIRED = "required"


@dataclass(frozen=True)
class FieldDoc:
    """One field: its dotted path, what it holds, its default, what it does, a manifest fragment using it."""

    path: str
    kind: str
    default: str
    text: str
    example: str


def _default(cls: type, name: str, none: str = "none") -> str:
    """The dataclass field's default as a person reads it ("none" for None, "" shown as none)."""
    for f in fields(cls):
        if f.name == name:
            value = f.default if f.default_factory is MISSING else f.default_factory()
            if value is None or value == "" or value == {}:
                return none
            if isinstance(value, bool):
                return str(value).lower()
            return str(value)
    raise KeyError(f"{cls.__name__} has no field {name}")


def _choices(options: tuple[str, ...]) -> str:
    return " | ".join(options)


#: The minimal manifest every example is merged into when it is checked: the three required fields.
BASE_MANIFEST = "name: example\ncommand: python train.py\nresults: s3://results/example\n"

FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        "name",
        "string",
        REQUIRED,
        "The experiment's name: 1 to 100 letters, digits, `.`, `_` or `-`. Not unique: the experiment id is.",
        "name: digits-mlp",
    ),
    FieldDoc("description", "string", "none", "Free text shown with the experiment.", "description: first try"),
    FieldDoc(
        "framework",
        "mapping or string",
        _default(Framework, "name"),
        'What runs the command: `{name: pytorch, version: "2.13"}`, or only the name. A container agent '
        "offers the framework images it holds (`runyard images build pytorch 2.13`); a process agent offers "
        "`runyard agent --framework NAME=PYTHON` (or `NAME@VERSION=PYTHON`). A run goes only to an agent that "
        "offers its framework, and its version when it names one.",
        'framework: {name: pytorch, version: "2.13"}',
    ),
    FieldDoc(
        "framework.name",
        _choices(FRAMEWORKS),
        "required in the mapping",
        "The framework's name.",
        "framework: {name: tensorflow}",
    ),
    FieldDoc(
        "framework.version",
        "string",
        "none",
        'The framework version: the run goes only to an agent offering it ("2.13" matches an agent\'s 2.13 and '
        "2.13.x), and a version no registered agent offers is refused at submit. Without it, any version of the "
        'framework. Quote it ("2.13"): YAML reads 2.13 as a number.',
        'framework: {name: pytorch, version: "2.13"}',
    ),
    FieldDoc(
        "command",
        "string",
        REQUIRED,
        "The shell command of every run, run in the unpacked code folder. `${name}` is replaced by the run's "
        "value of hyperparameter `name`; an unknown placeholder is an error.",
        "command: python train.py --lr ${lr}\nhyperparameters: {lr: 0.01}",
    ),
    FieldDoc("resources", "mapping", "see below", "What each run needs.", "resources: {gpus: 1, cpus: 2}"),
    FieldDoc(
        "resources.gpus",
        f"integer 0..{mp.MAX_GPUS}",
        _default(Resources, "gpus"),
        "GPUs per run, all on one agent, given as `CUDA_VISIBLE_DEVICES=GPU-<uuid>,...`. 0 runs on any agent.",
        "resources: {gpus: 2}",
    ),
    FieldDoc(
        "resources.cpus",
        f"integer 1..{mp.MAX_CPUS}",
        _default(Resources, "cpus"),
        "CPU cores per run.",
        "resources: {cpus: 4}",
    ),
    FieldDoc(
        "resources.memory",
        "size",
        "no limit",
        "Memory per run: `4Gi`, `512MiB`, `1G` or a number of bytes (`K` ... `E` are powers of 1000, `Ki` ... `Ei`"
        " of 1024; the CLI's size settings read sizes the same way).",
        "resources: {memory: 4Gi}",
    ),
    FieldDoc(
        "resources.gpu_model",
        "string",
        "any model",
        "Only agents with this GPU model (`H100` matches the agent's short model or full name).",
        "resources: {gpus: 1, gpu_model: H100}",
    ),
    FieldDoc(
        "resources.labels",
        "mapping",
        "none",
        "Only agents with all of these labels (`runyard agent --label pool=research`).",
        "resources: {labels: {pool: research}}",
    ),
    FieldDoc(
        "data",
        "URI",
        "none",
        "Object storage prefix staged read-only into `$DATA_DIR` before the command starts: `s3://bucket/prefix` "
        "or `file:///absolute/path`. A prefix with no objects fails the run at staging.",
        "data: s3://datasets/digits",
    ),
    FieldDoc(
        "results",
        "URI",
        REQUIRED,
        "Where results go: `$RESULT_DIR` is uploaded to `<results>/<run id>/` when the command exits 0.",
        "results: s3://results/digits-mlp",
    ),
    FieldDoc(
        "hyperparameters",
        "mapping",
        "none",
        "Name to space (see *Hyperparameter types*). A list is short for `categorical`, a single value for "
        "`const`. Names are letters, digits and `_`.",
        "hyperparameters:\n  lr: [0.01, 0.003]\n  epochs: 10\nsearch: {method: grid}",
    ),
    FieldDoc(
        "search",
        "mapping",
        "a single run",
        "How runs are made from the hyperparameters.",
        "search: {method: grid, metric: val_accuracy, goal: maximize}\nhyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "search.method",
        _choices(SEARCH_METHODS),
        _default(Search, "method"),
        "`single`: one run (every hyperparameter const). `grid`: every combination. `list`: the runs of "
        "`search.runs`. `random`: `max_runs` samples. `tpe`: `max_runs` trials, each picked by Optuna's TPE "
        "sampler from the results so far. Required when a hyperparameter varies.",
        "search: {method: random, max_runs: 8, seed: 1}\nhyperparameters: {lr: {type: log, min: 1.0e-4, max: 0.1}}",
    ),
    FieldDoc(
        "search.max_runs",
        f"integer 1..{MAX_RUNS_PER_EXPERIMENT}",
        "the grid or list size",
        "Most runs of the experiment; required for `random` and `tpe` (how many to sample).",
        "search: {method: random, max_runs: 20}\nhyperparameters: {hidden: {type: int, min: 32, max: 256}}",
    ),
    FieldDoc(
        "search.max_parallel",
        "integer >= 1",
        "no cap",
        "At most this many runs of the experiment hold slots at once; the searcher starts the next as one ends.",
        "search: {method: grid, max_parallel: 2}\nhyperparameters: {lr: [0.1, 0.01, 0.001]}",
    ),
    FieldDoc(
        "search.runs",
        "list of mappings",
        "none",
        "For `method: list`: one mapping of hyperparameter values per run (const ones may be left out).",
        "search:\n  method: list\n  runs: [{lr: 0.1}, {lr: 0.01}]\n"
        "hyperparameters: {lr: {type: double, min: 0, max: 1}}",
    ),
    FieldDoc(
        "search.seed",
        "integer",
        _default(Search, "seed"),
        "Seed of `random` and `tpe`: the same seed gives the same trials.",
        "search: {method: random, max_runs: 4, seed: 7}\nhyperparameters: {lr: {type: double, min: 0, max: 1}}",
    ),
    FieldDoc(
        "search.metric",
        "string",
        "none",
        "The metric that ranks runs (`runyard show`, `runyard best`), drives `tpe` and early stopping.",
        "search: {method: single, metric: val_loss, goal: minimize}",
    ),
    FieldDoc(
        "search.goal",
        _choices(GOALS),
        "required with metric",
        "Whether a higher or a lower `metric` is better.",
        "search: {method: single, metric: val_accuracy, goal: maximize}",
    ),
    FieldDoc(
        "search.early_stopping",
        _choices(EARLY_STOPPING),
        _default(Search, "early_stopping"),
        "`asha`: stop a run whose metric at a rung is not in the top 1/reduction_factor of the runs that "
        "reached that rung; it ends `STOPPED_EARLY` and frees its GPUs.",
        "search: {method: random, max_runs: 12, metric: val_accuracy, goal: maximize, early_stopping: asha}\n"
        "hyperparameters: {lr: {type: log, min: 1.0e-4, max: 0.1}}",
    ),
    FieldDoc(
        "search.asha",
        "mapping",
        "see below",
        "ASHA's rungs, at `min_resource * reduction_factor**k` steps.",
        "search:\n  method: grid\n  metric: val_accuracy\n  goal: maximize\n  early_stopping: asha\n"
        "  asha: {min_resource: 1, reduction_factor: 3, max_resource: 9}\nhyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "search.asha.min_resource",
        "integer >= 1",
        _default(AshaSettings, "min_resource"),
        "Step (epoch) of the first rung.",
        "search: {method: grid, metric: m, goal: maximize, early_stopping: asha, asha: {min_resource: 2}}\n"
        "hyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "search.asha.reduction_factor",
        "integer >= 2",
        _default(AshaSettings, "reduction_factor"),
        "Each rung keeps the top 1/reduction_factor.",
        "search: {method: grid, metric: m, goal: maximize, early_stopping: asha, asha: {reduction_factor: 2}}\n"
        "hyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "search.asha.max_resource",
        "integer > min_resource",
        "no bound",
        "Steps a run trains at most; no rung at or above it.",
        "search: {method: grid, metric: m, goal: maximize, early_stopping: asha, asha: {max_resource: 27}}\n"
        "hyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "search.asha.time_unit",
        _choices(mp.TIME_UNITS),
        _default(AshaSettings, "time_unit"),
        "What the metric's step counts, for reading the rungs.",
        "search: {method: grid, metric: m, goal: maximize, early_stopping: asha, asha: {time_unit: steps}}\n"
        "hyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "search.asha.mode",
        _choices(mp.ASHA_MODES),
        _default(AshaSettings, "mode"),
        "`stop`: a run that misses a rung's cut ends `STOPPED_EARLY`. `pause` (ASHA with promotions, for "
        "scripts that checkpoint to `$CHECKPOINT_DIR` and resume from it): every run that reaches a rung is "
        "`PAUSED` with its checkpoint; a free GPU goes to the best paused run in the top 1/reduction_factor "
        "of the highest rung that has one, which resumes and trains to the next rung, else to a new "
        "configuration. Runs never promoted are stopped when the search ends. Needs `max_resource`.",
        "search:\n  method: random\n  max_runs: 27\n  max_parallel: 4\n  metric: val_accuracy\n"
        "  goal: maximize\n  early_stopping: asha\n  asha: {max_resource: 27, mode: pause}\n"
        "hyperparameters: {lr: {type: log, min: 1.0e-4, max: 0.1}}",
    ),
    FieldDoc(
        "search.max_time",
        "duration",
        "no limit",
        "Budget from submit (`90s`, `30m`, `2h`, `1d`): then no run starts and running ones are stopped early.",
        "search: {method: grid, max_time: 2h}\nhyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "search.max_gpu_hours",
        "number > 0",
        "no limit",
        "Budget of billed GPU time of all its runs; when spent, as for `max_time`.",
        "search: {method: grid, max_gpu_hours: 10}\nhyperparameters: {lr: [0.1, 0.01]}",
    ),
    FieldDoc(
        "metrics",
        "mapping",
        "none",
        "How metrics are read from what the run prints.",
        "metrics: {patterns: ['loss=(?P<loss>[0-9.]+)']}",
    ),
    FieldDoc(
        "metrics.patterns",
        "list of regular expressions",
        "none",
        "Each stdout line is matched against each pattern; every named group but `step` is a metric, `step` "
        "(optional) its step. TensorBoard event files under `$RESULT_DIR` and `runyard.log(...)` need no pattern.",
        "metrics:\n  patterns: ['epoch (?P<step>\\d+) val_accuracy=(?P<val_accuracy>[0-9.]+)']",
    ),
    FieldDoc(
        "max_restarts",
        f"integer 0..{mp.MAX_RESTARTS}",
        _default(Manifest, "max_restarts"),
        "How often a run that failed for infrastructure reasons (agent lost, staging) is queued again.",
        "max_restarts: 2",
    ),
    FieldDoc(
        "env",
        "mapping",
        "none",
        "Environment variables of every run. "
        f"{', '.join(mp.RESERVED_ENV)} and `RUNYARD_*` are set by Runyard and refused here.",
        'env: {OMP_NUM_THREADS: "1"}',
    ),
    FieldDoc(
        "priority",
        f"integer -{mp.MAX_PRIORITY}..{mp.MAX_PRIORITY}",
        _default(Manifest, "priority"),
        "Higher runs first within the account's queue (`runyard admin priority` changes it later).",
        "priority: 10",
    ),
    FieldDoc(
        "image",
        "string",
        "the framework's image",
        "Your own image, run instead of the framework's: an OCI reference the agent's engine already holds "
        "(`registry.example.com/team/train:1.0`, `localhost/train@sha256:...`). Runs go only to container agents "
        "(`runyard agent --runtime container`); while agents are registered and none runs containers, it is "
        "refused at submit. `framework` may still name what the image holds.",
        "image: localhost/team/train:1.0",
    ),
    FieldDoc(
        "network",
        _choices(NETWORKS),
        _default(Manifest, "network"),
        "What a run's container may reach: `none`, no network at all; `egress`, outbound connections for runs "
        "that download. Never the control plane, NATS or the database.",
        "network: egress",
    ),
    FieldDoc(
        "preemptible",
        "boolean",
        "true",
        "`false`: the scheduler never stops these runs to give their GPUs to another account's run below its fair "
        "share, or to a higher-priority run of your account (an admin can protect a whole account: "
        "`runyard admin accounts set ACCOUNT --preemptible false`).",
        "preemptible: false",
    ),
    FieldDoc(
        "preemption",
        "mapping",
        "none",
        "How a preempted run is stopped. It is sent SIGTERM, then SIGKILL after `grace`; it goes back to the queue "
        "(uncharged) and resumes from its latest checkpoint.",
        "preemption: {grace: 60s}",
    ),
    FieldDoc(
        "preemption.grace",
        f"duration up to 1h ({mp.MAX_PREEMPTION_GRACE_S}s)",
        "60s",
        "Time between SIGTERM and SIGKILL when the run is preempted: write a checkpoint to `$CHECKPOINT_DIR` in it.",
        "preemption:\n  grace: 2m",
    ),
    FieldDoc(
        "from_run", "run id", "none",
        "Fork: every run of the experiment starts from this run's latest checkpoint (staged into "
        "`$CHECKPOINT_DIR`). The run must be your account's and have a checkpoint. "
        "`runyard submit --from RUN` overrides it.",
        "from_run: run-abcdefghij",
    ),
)


@dataclass(frozen=True)
class HyperparameterDoc:
    """One hyperparameter type: what it draws, its fields (besides `type`) and an example."""

    type: str
    text: str
    fields: tuple[tuple[str, str, str], ...]  # (field, default, what)
    example: str


HYPERPARAMETER_TYPES: tuple[HyperparameterDoc, ...] = (
    HyperparameterDoc(
        "const", "One value for every run.", (("value", REQUIRED, "the value"),), "epochs: {type: const, value: 10}"
    ),
    HyperparameterDoc(
        "int", "Integers `min`, `min+step`, ... up to `max`.",
        (("min", REQUIRED, "lowest"), ("max", REQUIRED, "highest (inclusive)"), ("step", "1", "spacing")),
        "hidden: {type: int, min: 32, max: 256, step: 32}",
    ),
    HyperparameterDoc(
        "double", "Uniform over [min, max]; a grid takes `count` evenly spaced points.",
        (("min", REQUIRED, "lowest"), ("max", REQUIRED, "highest"),
         ("count", "required for grid", "grid points, ends included")),
        "dropout: {type: double, min: 0.0, max: 0.5, count: 3}",
    ),
    HyperparameterDoc(
        "log", "Log-uniform over [min, max] (min > 0); a grid takes `count` log-spaced points.",
        (("min", REQUIRED, "lowest, > 0"), ("max", REQUIRED, "highest"),
         ("base", str(LogRange(1, 2).base).removesuffix(".0"), "logarithm base"),
         ("count", "required for grid", "grid points, ends included")),
        "lr: {type: log, min: 1.0e-4, max: 1.0e-1, count: 4}",
    ),
    HyperparameterDoc(
        "categorical", "One of the listed values (a plain list is short for this).",
        (("values", REQUIRED, "non-empty list of distinct values"),),
        "optimizer: {type: categorical, values: [adam, sgd]}",
    ),
)  # fmt: skip


def hyperparameter_example_manifest(doc: HyperparameterDoc) -> str:
    """A manifest fragment that uses the type's example in a grid (or a single run for const)."""
    method = "single" if doc.type == "const" else "grid"
    return f"hyperparameters:\n  {doc.example}\nsearch: {{method: {method}}}"
