"""What an experiment decided at submit, as it is recorded on ExperimentCreated (`facts`).

The manifest is parsed once, when the experiment is submitted; what it decided
(priority, searched or not, the objective its runs are ranked by, what each
run asks for, the validated manifest the runs are made from, from which a
searcher's trials follow as a pure function) is recorded beside the user's YAML. Readers (projections, the
searcher, a handler adding a trial) take these facts and never parse the YAML
again, so a parser that grows stricter or a default that changes cannot change
what an experiment already logged means.

`facts_of` and `manifest_of` are inverses on a validated manifest (less its
name, which ExperimentCreated carries itself): the searcher and the run specs
are built from the `Manifest` value exactly as at submit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from runyard.server.domain.manifest_model import (
    AshaSettings,
    Categorical,
    Const,
    DoubleRange,
    Framework,
    Goal,
    Hyperparameter,
    IntRange,
    LogRange,
    Manifest,
    Network,
    Resources,
    Scalar,
    Search,
    SearchMethod,
)
from runyard.server.domain.search_space import expand_trials
from runyard.server.domain.searchers import is_searched
from runyard.v1 import common_pb2, facts_pb2

_NETWORKS = {"none": common_pb2.RUN_NETWORK_NONE, "egress": common_pb2.RUN_NETWORK_EGRESS}
_NETWORK_NAMES: dict[int, Network] = {common_pb2.RUN_NETWORK_EGRESS: "egress"}


def runs_at_submit(manifest: Manifest) -> int:
    """How many runs an experiment queues when it is submitted (a searched one adds the rest as slots free)."""
    search = manifest.search
    if not is_searched(manifest):
        return len(expand_trials(manifest))
    total = search.max_runs if search.method == "tpe" else len(expand_trials(manifest))
    return min(total or 1, search.max_parallel or total or 1)


def facts_of(manifest: Manifest) -> facts_pb2.ExperimentFacts:
    """The facts a validated manifest decides."""
    search = manifest.search
    searched = is_searched(manifest)
    facts = facts_pb2.ExperimentFacts(
        priority=manifest.priority,
        searched=searched,
        resources=resources_of(manifest.resources),
        runs_at_submit=runs_at_submit(manifest),
        plan=plan_of(manifest),
    )
    if search.metric:
        facts.objective_metric = search.metric
        facts.objective_maximize = search.goal != "minimize"
    return facts


def resources_of(resources: Resources) -> common_pb2.Resources:
    return common_pb2.Resources(
        gpus=resources.gpus,
        cpus=resources.cpus,
        memory_bytes=resources.memory_bytes,
        gpu_model=resources.gpu_model,
        agent_labels=dict(resources.labels),
    )


def plan_of(manifest: Manifest) -> facts_pb2.ExperimentPlan:
    plan = facts_pb2.ExperimentPlan(
        command=manifest.command,
        framework=common_pb2.Framework(name=manifest.framework.name, version=manifest.framework.version),
        data_uri=manifest.data,
        results_uri=manifest.results,
        metric_patterns=list(manifest.metric_patterns),
        env=dict(manifest.env),
        max_restarts=manifest.max_restarts,
        image=manifest.image,
        network=_NETWORKS[manifest.network],
        description=manifest.description,
        hyperparameters=[_hyperparameter_of(name, hp) for name, hp in manifest.hyperparameters.items()],
        search=_search_of(manifest.search),
    )
    return plan


def scalar_of(value: Scalar) -> facts_pb2.ScalarValue:
    if isinstance(value, bool):
        return facts_pb2.ScalarValue(flag=value)
    if isinstance(value, int):
        return facts_pb2.ScalarValue(integer=value)
    if isinstance(value, float):
        return facts_pb2.ScalarValue(number=value)
    return facts_pb2.ScalarValue(text=value)


def scalar_from(value: facts_pb2.ScalarValue) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind == "flag":
        return value.flag
    if kind == "integer":
        return value.integer
    if kind == "number":
        return value.number
    return value.text


def trial_of(values: Mapping[str, Scalar]) -> facts_pb2.Trial:
    return facts_pb2.Trial(values=[facts_pb2.NamedValue(name=n, value=scalar_of(v)) for n, v in values.items()])


def trial_from(trial: facts_pb2.Trial) -> dict[str, Scalar]:
    return {v.name: scalar_from(v.value) for v in trial.values}


def _hyperparameter_of(name: str, hp: Hyperparameter) -> facts_pb2.HyperparameterSpec:
    spec = facts_pb2.HyperparameterSpec(name=name)
    if isinstance(hp, Const):
        spec.constant.CopyFrom(scalar_of(hp.value))
    elif isinstance(hp, IntRange):
        spec.int_range.CopyFrom(facts_pb2.HyperparameterSpec.IntRange(min=hp.min, max=hp.max, step=hp.step))
    elif isinstance(hp, DoubleRange):
        spec.double_range.CopyFrom(facts_pb2.HyperparameterSpec.DoubleRange(min=hp.min, max=hp.max, count=hp.count))
    elif isinstance(hp, LogRange):
        spec.log_range.CopyFrom(
            facts_pb2.HyperparameterSpec.LogRange(min=hp.min, max=hp.max, base=hp.base, count=hp.count)
        )
    else:
        spec.categorical.CopyFrom(facts_pb2.HyperparameterSpec.Categorical(values=[scalar_of(v) for v in hp.values]))
    return spec


def _hyperparameter_from(spec: facts_pb2.HyperparameterSpec) -> Hyperparameter:
    kind = spec.WhichOneof("kind")
    if kind == "int_range":
        r = spec.int_range
        return IntRange(min=r.min, max=r.max, step=r.step)
    if kind == "double_range":
        d = spec.double_range
        return DoubleRange(min=d.min, max=d.max, count=d.count if d.HasField("count") else None)
    if kind == "log_range":
        g = spec.log_range
        return LogRange(min=g.min, max=g.max, base=g.base, count=g.count if g.HasField("count") else None)
    if kind == "categorical":
        return Categorical(values=tuple(scalar_from(v) for v in spec.categorical.values))
    return Const(value=scalar_from(spec.constant))


def _search_of(search: Search) -> facts_pb2.SearchPlan:
    asha = search.asha
    return facts_pb2.SearchPlan(
        method=search.method,
        max_runs=search.max_runs,
        max_parallel=search.max_parallel,
        runs=[trial_of(run) for run in search.runs],
        seed=search.seed,
        metric=search.metric,
        goal=search.goal,
        early_stopping=search.early_stopping,
        asha=facts_pb2.AshaPlan(
            min_resource=asha.min_resource,
            reduction_factor=asha.reduction_factor,
            max_resource=asha.max_resource,
            time_unit=asha.time_unit,
            mode="" if asha.mode == "stop" else asha.mode,  # the default stays unwritten: same facts as before modes
        ),
        max_time_s=search.max_time_s,
        max_gpu_hours=search.max_gpu_hours,
    )


def _search_from(plan: facts_pb2.SearchPlan) -> Search:
    a = plan.asha
    return Search(
        method=cast(SearchMethod, plan.method),
        max_runs=plan.max_runs if plan.HasField("max_runs") else None,
        max_parallel=plan.max_parallel if plan.HasField("max_parallel") else None,
        runs=tuple(trial_from(run) for run in plan.runs),
        seed=plan.seed,
        metric=plan.metric if plan.HasField("metric") else None,
        goal=cast(Goal, plan.goal) if plan.HasField("goal") else None,
        early_stopping=plan.early_stopping,
        asha=AshaSettings(
            min_resource=a.min_resource,
            reduction_factor=a.reduction_factor,
            max_resource=a.max_resource if a.HasField("max_resource") else None,
            time_unit=a.time_unit,
            mode=a.mode or "stop",  # facts recorded before ASHA had modes: stop-only
        ),
        max_time_s=plan.max_time_s if plan.HasField("max_time_s") else None,
        max_gpu_hours=plan.max_gpu_hours if plan.HasField("max_gpu_hours") else None,
    )


def manifest_of(name: str, facts: facts_pb2.ExperimentFacts) -> Manifest | None:
    """The validated manifest the facts were recorded from; None when they hold no plan (an old, unparsable one)."""
    if not facts.HasField("plan"):
        return None
    plan, res = facts.plan, facts.resources
    return Manifest(
        name=name,
        command=plan.command,
        results=plan.results_uri,
        framework=Framework(name=plan.framework.name, version=plan.framework.version),
        resources=Resources(
            gpus=res.gpus,
            cpus=res.cpus,
            memory_bytes=res.memory_bytes,
            gpu_model=res.gpu_model,
            labels=dict(res.agent_labels),
        ),
        data=plan.data_uri,
        hyperparameters={spec.name: _hyperparameter_from(spec) for spec in plan.hyperparameters},
        search=_search_from(plan.search),
        metric_patterns=tuple(plan.metric_patterns),
        max_restarts=plan.max_restarts,
        env=dict(plan.env),
        description=plan.description,
        priority=facts.priority,
        image=plan.image,
        network=_NETWORK_NAMES.get(plan.network, "none"),
    )


def objective(facts: facts_pb2.ExperimentFacts) -> tuple[str, bool] | None:
    """(metric, maximize) its runs are ranked by, or None when it names no metric."""
    if not facts.objective_metric:
        return None
    return facts.objective_metric, facts.objective_maximize


__all__: Sequence[str] = [
    "facts_of",
    "manifest_of",
    "objective",
    "runs_at_submit",
    "scalar_from",
    "scalar_of",
    "trial_from",
    "trial_of",
]
