"""Manifest validation: a good manifest parses, and every bad field is named by its path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from runyard.server.domain.errors import ManifestError
from runyard.server.domain.manifest import (
    Categorical,
    Const,
    DoubleRange,
    Framework,
    IntRange,
    LogRange,
    Resources,
    parse_manifest,
)
from runyard.server.domain.manifest_model import AshaSettings

DESIGN_EXAMPLE = """
name: digits-mlp
framework: {name: pytorch, version: "2.13"}      # or tensorflow
command: python train.py --lr ${lr} --hidden ${hidden}
resources: {gpus: 1, cpus: 2, memory: 4Gi}
data: s3://datasets/digits        # staged read-only into $DATA_DIR
results: s3://results/digits      # $RESULT_DIR is uploaded here, one prefix per run
hyperparameters:
  lr: {type: log, min: 1.0e-4, max: 1.0e-1}
  hidden: {type: categorical, values: [64, 128, 256]}
search: {method: random, max_runs: 40, max_parallel: 8,
         metric: val_accuracy, goal: maximize, early_stopping: asha}
max_restarts: 1
"""

BASE: dict[str, Any] = {
    "name": "digits-mlp",
    "framework": {"name": "pytorch", "version": "2.13"},
    "command": "python train.py --lr ${lr} --hidden ${hidden} --epochs ${epochs}",
    "resources": {"gpus": 1, "cpus": 2, "memory": "4Gi"},
    "data": "s3://datasets/digits",
    "results": "file:///srv/results/digits",
    "hyperparameters": {
        "lr": {"type": "log", "min": 1e-4, "max": 1e-1, "count": 4},
        "hidden": {"type": "categorical", "values": [64, 128]},
        "epochs": {"type": "const", "value": 5},
        "dropout": {"type": "double", "min": 0.0, "max": 0.5, "count": 2},
        "layers": {"type": "int", "min": 1, "max": 3},
    },
    "search": {"method": "grid", "max_runs": 100},
    "metrics": {"patterns": [r"step (?P<step>\d+) loss (?P<loss>[0-9.]+)"]},
    "max_restarts": 2,
    "env": {"OMP_NUM_THREADS": 4},
}

DELETE = object()


def manifest_with(path: str, value: object) -> str:
    """BASE with one dotted path set (or deleted), as YAML text."""
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return yaml.safe_dump(doc, sort_keys=False)


def errors_of(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as refused:
        parse_manifest(text)
    return refused.value


def test_the_design_example_parses() -> None:
    m = parse_manifest(DESIGN_EXAMPLE)
    assert m.name == "digits-mlp"
    assert m.framework == Framework("pytorch", "2.13")
    assert m.resources == Resources(gpus=1, cpus=2, memory_bytes=4 * 2**30)
    assert (m.data, m.results) == ("s3://datasets/digits", "s3://results/digits")
    assert m.hyperparameters == {
        "lr": LogRange(1e-4, 1e-1),
        "hidden": Categorical((64, 128, 256)),
    }
    assert list(m.hyperparameters) == ["lr", "hidden"], "the file's order is the run order"
    s = m.search
    assert (s.method, s.max_runs, s.max_parallel, s.seed) == ("random", 40, 8, 0)
    assert (s.metric, s.goal, s.early_stopping) == ("val_accuracy", "maximize", "asha")
    assert m.max_restarts == 1


def test_the_full_base_manifest_parses() -> None:
    m = parse_manifest(yaml.safe_dump(BASE, sort_keys=False))
    assert m.hyperparameters["epochs"] == Const(5)
    assert m.hyperparameters["dropout"] == DoubleRange(0.0, 0.5, 2)
    assert m.hyperparameters["layers"] == IntRange(1, 3, 1)
    assert m.metric_patterns == (r"step (?P<step>\d+) loss (?P<loss>[0-9.]+)",)
    assert m.env == {"OMP_NUM_THREADS": "4"}


def test_defaults_of_a_minimal_manifest() -> None:
    m = parse_manifest("name: smoke\ncommand: python -c 'print(1)'\nresults: s3://r/smoke\n")
    assert m.framework == Framework("python", "")
    assert m.resources == Resources(gpus=0, cpus=1, memory_bytes=0)
    assert (m.data, m.max_restarts, m.env, m.metric_patterns) == ("", 0, {}, ())
    assert m.search.method == "single"
    assert m.hyperparameters == {}


@pytest.mark.parametrize(
    ("memory", "size"),
    [
        ("4Gi", 4 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        (1024, 1024),
        ("2048", 2048),
        # The CLI settings' spellings, one grammar since units.py: lower case, MiB, digit groups.
        ("8g", 8 * 10**9),
        ("256 MiB", 256 * 2**20),
        ("1_000_000", 10**6),
    ],
)
def test_memory_sizes(memory: object, size: int) -> None:
    assert parse_manifest(manifest_with("resources.memory", memory)).resources.memory_bytes == size


def test_shorthands_for_const_and_categorical() -> None:
    text = manifest_with("hyperparameters", {"epochs": 5, "hidden": [64, 128], "lr": 0.1})
    hps = parse_manifest(text).hyperparameters
    assert hps == {"epochs": Const(5), "hidden": Categorical((64, 128)), "lr": Const(0.1)}


BAD: list[tuple[str, object, str]] = [
    # (dotted path to set, value (DELETE removes it), the field the error must name)
    ("name", DELETE, "name"),
    ("name", "", "name"),
    ("name", "has space", "name"),
    ("name", "x" * 101, "name"),
    ("name", 5, "name"),
    ("description", ["x"], "description"),
    ("framework", "jax", "framework"),
    ("framework", 3, "framework"),
    ("framework.name", "jax", "framework.name"),
    ("framework.name", DELETE, "framework.name"),
    ("framework.version", 2.13, "framework.version"),
    ("framework.image", "x", "framework.image"),
    ("command", DELETE, "command"),
    ("command", "   ", "command"),
    ("command", ["python", "x.py"], "command"),
    ("command", "python train.py --lr ${learning_rate}", "command"),
    ("resources", "big", "resources"),
    ("resources.gpus", -1, "resources.gpus"),
    ("resources.gpus", "two", "resources.gpus"),
    ("resources.gpus", True, "resources.gpus"),
    ("resources.gpus", 1.5, "resources.gpus"),
    ("resources.cpus", 0, "resources.cpus"),
    ("resources.memory", "lots", "resources.memory"),
    ("resources.memory", "4 gigabytes", "resources.memory"),
    ("resources.memory", 0, "resources.memory"),
    ("resources.memory", -5, "resources.memory"),
    ("resources.disk", "10Gi", "resources.disk"),
    ("data", "http://example.com/data", "data"),
    ("data", "s3://", "data"),
    ("data", "file://relative/path", "data"),
    ("data", "s3://bucket/../etc", "data"),
    ("data", 7, "data"),
    ("results", DELETE, "results"),
    ("results", "/srv/results", "results"),
    ("results", "s3://bucket name/x", "results"),
    ("hyperparameters", ["lr"], "hyperparameters"),
    ("hyperparameters.1x", 3, "hyperparameters.1x"),
    ("hyperparameters.bad-name", 3, "hyperparameters.bad-name"),
    ("hyperparameters.epochs", None, "hyperparameters.epochs"),
    ("hyperparameters.epochs", {"value": 5}, "hyperparameters.epochs.type"),
    ("hyperparameters.epochs", {"type": "float", "value": 5}, "hyperparameters.epochs.type"),
    ("hyperparameters.epochs", {"type": "const"}, "hyperparameters.epochs.value"),
    ("hyperparameters.epochs", {"type": "const", "value": [1]}, "hyperparameters.epochs.value"),
    ("hyperparameters.epochs", {"type": "const", "value": 5, "min": 1}, "hyperparameters.epochs.min"),
    ("hyperparameters.layers.min", DELETE, "hyperparameters.layers.min"),
    ("hyperparameters.layers.min", 1.5, "hyperparameters.layers.min"),
    ("hyperparameters.layers.max", 0, "hyperparameters.layers.max"),
    ("hyperparameters.layers.step", 0, "hyperparameters.layers.step"),
    ("hyperparameters.layers.count", 3, "hyperparameters.layers.count"),
    ("hyperparameters.dropout.min", "low", "hyperparameters.dropout.min"),
    ("hyperparameters.dropout.max", float("inf"), "hyperparameters.dropout.max"),
    ("hyperparameters.dropout.max", DELETE, "hyperparameters.dropout.max"),
    ("hyperparameters.dropout.max", -1.0, "hyperparameters.dropout.max"),
    ("hyperparameters.dropout.count", 0, "hyperparameters.dropout.count"),
    ("hyperparameters.dropout.base", 2, "hyperparameters.dropout.base"),
    ("hyperparameters.lr.min", 0, "hyperparameters.lr.min"),
    ("hyperparameters.lr.min", -0.1, "hyperparameters.lr.min"),
    ("hyperparameters.lr.base", 1, "hyperparameters.lr.base"),
    ("hyperparameters.lr.base", -2, "hyperparameters.lr.base"),
    ("hyperparameters.hidden.values", [], "hyperparameters.hidden.values"),
    ("hyperparameters.hidden.values", "64", "hyperparameters.hidden.values"),
    ("hyperparameters.hidden.values", [64, [128]], "hyperparameters.hidden.values[1]"),
    ("hyperparameters.hidden.values", [64, 128, 64], "hyperparameters.hidden.values[2]"),
    ("search", "grid", "search"),
    ("search.method", "bayes", "search.method"),
    ("search.max_runs", 10, "search.max_runs"),  # the grid has 4*2*2*3 = 48 runs
    ("search.max_runs", 0, "search.max_runs"),
    ("search.max_runs", 100_000, "search.max_runs"),
    ("search.max_parallel", 0, "search.max_parallel"),
    ("search.seed", "x", "search.seed"),
    ("search.runs", [{"lr": 0.01}], "search.runs"),
    ("search.goal", "up", "search.goal"),
    ("search.goal", "maximize", "search.metric"),
    ("search.metric", "val_loss", "search.goal"),
    ("search.metric", "", "search.metric"),
    ("search.early_stopping", "hyperband", "search.early_stopping"),
    ("search.early_stopping", "asha", "search.metric"),
    ("search.strategy", "x", "search.strategy"),
    ("search", DELETE, "search.method"),
    ("search.method", "single", "search.method"),
    ("hyperparameters.lr.count", DELETE, "hyperparameters.lr.count"),
    ("metrics", ["loss"], "metrics"),
    ("metrics.patterns", "loss=(?P<loss>.*)", "metrics.patterns"),
    ("metrics.patterns", ["loss=(?P<loss>[0-9.]+"], "metrics.patterns[0]"),
    ("metrics.patterns", [r"loss=([0-9.]+)"], "metrics.patterns[0]"),
    ("metrics.patterns", [r"step (?P<step>\d+)"], "metrics.patterns[0]"),
    ("metrics.patterns", [r"(?P<loss>\d+)", 5], "metrics.patterns[1]"),
    ("metrics.files", ["x"], "metrics.files"),
    ("max_restarts", -1, "max_restarts"),
    ("max_restarts", "1", "max_restarts"),
    ("max_restarts", 1000, "max_restarts"),
    ("env", ["A=1"], "env"),
    ("env", {"1A": "x"}, "env.1A"),
    ("env", {"DATA_DIR": "/x"}, "env.DATA_DIR"),
    ("env", {"RUNYARD_TOKEN": "x"}, "env.RUNYARD_TOKEN"),
    ("env", {"A": None}, "env.A"),
    ("env", {"A": [1]}, "env.A"),
    ("gpus", 1, "gpus"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD, ids=[f"{p}={v!r:.30}" for p, v, _ in BAD])
def test_a_bad_field_is_named(path: str, value: object, field: str) -> None:
    error = errors_of(manifest_with(path, value))
    assert field in error.fields, str(error)
    assert f"{field}: " in str(error)


def test_the_unknown_placeholder_is_named() -> None:
    error = errors_of(manifest_with("command", "python t.py --lr ${learning_rate}"))
    assert str(error) == "command: unknown placeholder ${learning_rate}: not a hyperparameter"


def test_list_runs_are_checked_against_the_space() -> None:
    text = manifest_with(
        "search",
        {
            "method": "list",
            "runs": [
                {"lr": 0.01, "hidden": 64, "dropout": 0.1, "layers": 2},
                {"lr": 0.01, "hidden": 32, "dropout": 0.1, "layers": 2, "epochs": 5},
                {"lr": 5.0, "dropout": 0.1, "layers": 2, "momentum": 0.9},
                {"lr": 0.01, "hidden": 64, "dropout": 0.1, "layers": 2.5, "epochs": 6},
                "lr=0.1",
            ],
        },
    )
    assert errors_of(text).fields == [
        "search.runs[1].hidden",
        "search.runs[2].momentum",
        "search.runs[2].lr",
        "search.runs[2].hidden",
        "search.runs[3].epochs",
        "search.runs[3].layers",
        "search.runs[4]",
    ]


def test_every_bad_field_is_reported_at_once() -> None:
    doc = copy.deepcopy(BASE)
    doc["name"] = "bad name"
    doc["resources"]["gpus"] = -2
    doc["hyperparameters"]["lr"]["min"] = 0
    doc["max_restarts"] = -1
    doc["colour"] = "blue"
    error = errors_of(yaml.safe_dump(doc))
    assert sorted(error.fields) == sorted(
        ["name", "resources.gpus", "hyperparameters.lr.min", "max_restarts", "colour"]
    )
    for field in error.fields:
        assert f"{field}: " in str(error)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "manifest: is empty"),
        ("- name: x\n", "manifest: must be a mapping of fields, not a list"),
        ("name: [unclosed\n", "manifest: is not valid YAML at line 2"),
        ("name: x\n\tcommand: y\n", "manifest: is not valid YAML"),
    ],
)
def test_a_document_that_is_no_manifest(text: str, message: str) -> None:
    assert str(errors_of(text)).startswith(message)


# -- early stopping and budgets (search.asha, search.max_time, search.max_gpu_hours) -------------

ASHA_SEARCH: dict[str, Any] = {
    "method": "grid",
    "max_runs": 100,
    "metric": "loss",
    "goal": "minimize",
    "early_stopping": "asha",
    "asha": {"min_resource": 2, "reduction_factor": 2, "max_resource": 16, "time_unit": "steps"},
    "max_time": "2h",
    "max_gpu_hours": 1.5,
}


def with_search(**changes: object) -> str:
    """BASE searched with ASHA_SEARCH, each keyword a search field set (DELETE removes it)."""
    doc = copy.deepcopy(BASE)
    search = copy.deepcopy(ASHA_SEARCH)
    for key, value in changes.items():
        if value is DELETE:
            search.pop(key, None)
        else:
            search[key] = value
    doc["search"] = search
    return yaml.safe_dump(doc, sort_keys=False)


def with_asha(**changes: object) -> str:
    asha = {**ASHA_SEARCH["asha"], **changes}
    return with_search(asha={k: v for k, v in asha.items() if v is not DELETE})


def test_the_rung_ladder_and_budgets_parse() -> None:
    search = parse_manifest(with_search()).search
    assert search.early_stopping == "asha"
    assert search.asha == AshaSettings(min_resource=2, reduction_factor=2, max_resource=16, time_unit="steps")
    assert (search.max_time_s, search.max_gpu_hours) == (7200.0, 1.5)


def test_without_them_asha_has_its_default_ladder_and_no_budget() -> None:
    search = parse_manifest(with_search(asha=DELETE, max_time=DELETE, max_gpu_hours=DELETE)).search
    assert search.asha == AshaSettings(min_resource=1, reduction_factor=3, max_resource=None, time_unit="epochs")
    assert (search.max_time_s, search.max_gpu_hours) == (None, None)
    partial = parse_manifest(with_search(asha={"reduction_factor": 4})).search.asha
    assert partial == AshaSettings(min_resource=1, reduction_factor=4, max_resource=None, time_unit="epochs")


def test_a_budget_needs_no_early_stopping() -> None:
    search = parse_manifest(manifest_with("search.max_time", 600)).search
    assert (search.early_stopping, search.max_time_s) == ("none", 600.0)
    assert parse_manifest(manifest_with("search.max_gpu_hours", 2)).search.max_gpu_hours == 2.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600.0), (90.5, 90.5), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1.5h", 5400.0), ("1d", 86400.0)],
)
def test_max_time_reads_seconds_or_a_duration(value: object, seconds: float) -> None:
    assert parse_manifest(with_search(max_time=value)).search.max_time_s == seconds


SEARCH_BAD: list[tuple[str, dict[str, object], str]] = [
    # (label, search fields changed, the one field the error must name)
    ("asha not a mapping", {"asha": "fast"}, "search.asha"),
    ("asha unknown key", {"asha": {**ASHA_SEARCH["asha"], "grace_period": 1}}, "search.asha.grace_period"),
    ("asha without asha early stopping", {"early_stopping": "none"}, "search.asha"),
    ("asha without early stopping", {"early_stopping": DELETE}, "search.asha"),
    ("max_time soon", {"max_time": "soon"}, "search.max_time"),
    ("max_time 0", {"max_time": 0}, "search.max_time"),
    ("max_time -5", {"max_time": -5}, "search.max_time"),
    ("max_time 0s", {"max_time": "0s"}, "search.max_time"),
    ("max_time in weeks", {"max_time": "1w"}, "search.max_time"),
    ("max_time negative text", {"max_time": "-5m"}, "search.max_time"),
    ("max_time true", {"max_time": True}, "search.max_time"),
    ("max_time list", {"max_time": [60]}, "search.max_time"),
    ("max_gpu_hours 0", {"max_gpu_hours": 0}, "search.max_gpu_hours"),
    ("max_gpu_hours -1", {"max_gpu_hours": -1}, "search.max_gpu_hours"),
    ("max_gpu_hours text", {"max_gpu_hours": "lots"}, "search.max_gpu_hours"),
]
ASHA_BAD: list[tuple[str, dict[str, object], str]] = [
    ("reduction_factor 1", {"reduction_factor": 1}, "search.asha.reduction_factor"),
    ("reduction_factor 0", {"reduction_factor": 0}, "search.asha.reduction_factor"),
    ("reduction_factor 2.5", {"reduction_factor": 2.5}, "search.asha.reduction_factor"),
    ("reduction_factor text", {"reduction_factor": "half"}, "search.asha.reduction_factor"),
    ("min_resource 0", {"min_resource": 0}, "search.asha.min_resource"),
    ("max_resource = min_resource", {"max_resource": 2}, "search.asha.max_resource"),
    ("max_resource < min_resource", {"min_resource": 8, "max_resource": 4}, "search.asha.max_resource"),
    ("max_resource 0", {"max_resource": 0}, "search.asha.max_resource"),
    ("time_unit hours", {"time_unit": "hours"}, "search.asha.time_unit"),
]


@pytest.mark.parametrize(("label", "changes", "field"), SEARCH_BAD, ids=[c[0] for c in SEARCH_BAD])
def test_a_bad_search_field_gets_one_error_naming_it(label: str, changes: dict[str, object], field: str) -> None:
    error = errors_of(with_search(**changes))
    assert error.fields == [field], str(error)
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize(("label", "changes", "field"), ASHA_BAD, ids=[c[0] for c in ASHA_BAD])
def test_a_bad_rung_ladder_field_gets_one_error_naming_it(label: str, changes: dict[str, object], field: str) -> None:
    error = errors_of(with_asha(**changes))
    assert error.fields == [field], str(error)
    assert str(error).startswith(f"{field}: ")


def test_the_max_resource_error_says_what_it_must_exceed() -> None:
    assert "must be greater than min_resource (8)" in str(errors_of(with_asha(min_resource=8, max_resource=8)))


def test_asha_with_a_single_run_is_refused() -> None:
    doc = copy.deepcopy(BASE)
    doc["hyperparameters"] = {"lr": 0.01}
    doc["command"] = "python train.py --lr ${lr}"
    doc["search"] = {"method": "single", "metric": "loss", "goal": "minimize", "early_stopping": "asha"}
    error = errors_of(yaml.safe_dump(doc))
    assert error.fields == ["search.early_stopping"], str(error)
