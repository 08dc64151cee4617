"""Bounded work per manifest (issue 9): linear validation, limits with their own messages, numbers and text
that every later stage can handle, and placeholders that can never become shell syntax."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from runyard.server.domain.command_template import render_command
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.manifest import parse_manifest

# As runyard.server.domain.manifest_limits says (spelled out so this file also runs against older code).
MAX_MANIFEST_BYTES = 512 * 1024
MAX_VALUES_PER_HYPERPARAMETER = 10_000
MAX_HYPERPARAMETERS = 100


def manifest(command: str = "echo ${x}", x: object = None, search: str = "{method: grid}", extra: str = "") -> str:
    hp = x if x is not None else {"type": "categorical", "values": [1, 2]}
    doc = {"name": "bounds", "command": command, "results": "s3://results/bounds", "hyperparameters": {"x": hp}}
    return yaml.safe_dump(doc, width=10**9) + f"search: {search}\n" + extra


def refused(text: str) -> dict[str, str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    return {e.field: e.message for e in caught.value.errors}


def categorical_parse_seconds(count: int) -> float:
    text = manifest(x={"type": "categorical", "values": list(range(count))}, search="{method: random, max_runs: 2}")
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        parse_manifest(text)
        best = min(best, time.perf_counter() - started)
    return best


def test_categorical_values_are_checked_in_linear_time() -> None:
    # The duplicate check compared each value with every earlier one: 20,000 values took 83 s.
    small, large = categorical_parse_seconds(1000), categorical_parse_seconds(8000)
    # Linear: about 8x. Quadratic: about 64x.
    assert large / small < 24, f"1000 values: {small:.4f}s, 8000 values: {large:.4f}s"


def test_a_repeated_categorical_value_is_still_named() -> None:
    errors = refused(manifest(x={"type": "categorical", "values": [1, "1", 1.0, True]}))
    assert errors == {"hyperparameters.x.values[2]": "repeats the value 1.0"}


def test_a_list_search_checks_many_runs_against_many_values_quickly() -> None:
    values = list(range(MAX_VALUES_PER_HYPERPARAMETER))
    runs = [{"x": i} for i in range(1000)]
    doc = {
        "name": "bounds",
        "command": "echo ${x}",
        "results": "s3://results/bounds",
        "hyperparameters": {"x": {"type": "categorical", "values": values}},
        "search": {"method": "list", "runs": runs},
    }
    text = yaml.safe_dump(doc, width=10**9)
    started = time.perf_counter()
    parsed = parse_manifest(text)
    assert len(parsed.search.runs) == 1000
    assert time.perf_counter() - started < 5


def test_limits_have_their_own_messages() -> None:
    too_big = manifest(extra=f"description: {'a' * MAX_MANIFEST_BYTES}\n")
    assert refused(too_big) == {"manifest": "is larger than 512 KiB; put large value lists in data files"}
    values = list(range(MAX_VALUES_PER_HYPERPARAMETER + 1))
    many = refused(manifest(x={"type": "categorical", "values": values}, search="{method: random, max_runs: 2}"))
    assert many["hyperparameters.x.values"] == "has 10001 values; at most 10000 are allowed"
    hps = "\n".join(f"  h{i}: 1" for i in range(MAX_HYPERPARAMETERS + 1))
    text = f"name: n\ncommand: 'true'\nresults: s3://r/n\nhyperparameters:\n{hps}\n"
    assert "at most 100 are allowed" in refused(text)["hyperparameters"]
    grid = manifest(x={"type": "int", "min": 0, "max": 10**6})
    assert refused(grid)["search.max_runs"] == "the grid has 1000001 runs, more than 1000 allowed"


def test_the_error_message_names_the_first_errors_and_counts_the_rest() -> None:
    values = [1] * 500
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest(x={"type": "categorical", "values": values}, search="{method: random, max_runs: 2}"))
    assert len(caught.value.errors) == 499
    assert str(caught.value).endswith("; and 449 more errors")
    assert len(str(caught.value)) < 4000


@pytest.mark.parametrize(
    ("hp", "field"),
    [
        ({"type": "int", "min": -(10**30), "max": 5}, "hyperparameters.x.min"),
        ({"type": "double", "min": 0, "max": 10**400}, "hyperparameters.x.max"),
        ({"type": "log", "min": 1, "max": 10**400}, "hyperparameters.x.max"),
        ({"type": "log", "min": 1, "max": 2, "base": 10**400}, "hyperparameters.x.base"),
        ({"type": "categorical", "values": [1, 10**20]}, "hyperparameters.x.values[1]"),
        ({"type": "const", "value": 10**20}, "hyperparameters.x.value"),
        ({"type": "int", "min": 0, "max": 5, "step": 10**20}, "hyperparameters.x.step"),
    ],
)
def test_huge_numbers_in_hyperparameters_are_refused_by_field(hp: dict[str, object], field: str) -> None:
    # They used to raise OverflowError (UNKNOWN at the API) or reach a searcher that then failed forever.
    assert field in refused(manifest(x=hp, search="{method: random, max_runs: 2}"))


@pytest.mark.parametrize(
    ("search", "field"),
    [
        ("{method: random, max_runs: 2, max_parallel: 100000000000000000000}", "search.max_parallel"),
        ("{method: random, max_runs: 2, seed: 100000000000000000000}", "search.seed"),
        ("{method: random, max_runs: 2, max_time: 100000000000000000000}", "search.max_time"),
        ("{method: random, max_runs: 2, max_time: 99999999999d}", "search.max_time"),
        ("{method: random, max_runs: 2, max_gpu_hours: 100000000000000000000000000}", "search.max_gpu_hours"),
        (
            "{method: random, max_runs: 2, metric: m, goal: maximize, early_stopping: asha,"
            " asha: {reduction_factor: 100000000000000000000}}",
            "search.asha.reduction_factor",
        ),
    ],
)
def test_huge_numbers_in_search_settings_are_refused_by_field(search: str, field: str) -> None:
    assert field in refused(manifest(search=search))


def test_huge_memory_is_refused() -> None:
    assert "resources.memory" in refused(manifest(extra="resources: {memory: 99999999999999Ei}\n"))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('name: a\ncommand: "echo \\0 x"\nresults: s3://r/a\n', "command"),
        ('name: a\ncommand: "true"\nresults: s3://r/a\ndescription: a\ud800b\n', "manifest"),
        ('name: a\ncommand: "true"\nresults: s3://r/a\nenv: {A: "x\\0"}\n', "env.A"),
        ('name: a\ncommand: "echo ${x}"\nresults: s3://r/a\nhyperparameters: {x: ["a\\0"]}\n', "hyperparameters.x[0]"),
    ],
)
def test_text_the_backends_cannot_store_is_refused_by_field(text: str, field: str) -> None:
    # A NUL in a manifest's command reached the log and stopped every PostgreSQL projection.
    errors = refused(text)
    assert field in errors
    assert "NUL" in errors[field] or "surrogate" in errors[field]


@pytest.mark.parametrize(
    "command",
    [
        "sh -c 'echo ${x}'",
        'echo "${x}"',
        "sh -c \"echo '${x}'\"",
        "echo `echo ${x}`",
        "echo $((${x} + 1))",
        "echo ${HOME:-${x}}",
        "echo \\${x}",
        "cat <<EOF\n${x}\nEOF",
        "echo $'${x}'",
    ],
)
def test_a_placeholder_inside_quotes_is_refused_at_submit(command: str) -> None:
    errors = refused(manifest(command=command, x={"type": "categorical", "values": ["a b", "c"]}))
    assert "command" in errors and "${x} is " in errors["command"], errors
    assert "and a value of x needs shell quoting" in errors["command"]


@pytest.mark.parametrize(
    ("x", "printed"),
    [
        ({"type": "int", "min": 3, "max": 3}, "3"),
        ({"type": "categorical", "values": [0.001, "relu", True]}, "0.001"),
        ({"type": "const", "value": "a.b/c-1"}, "a.b/c-1"),
    ],
)
def test_a_value_that_never_needs_quoting_may_stand_anywhere(x: dict[str, object], printed: str) -> None:
    # Numbers, booleans and plain words are written bare: in quotes they are the same text.
    command = "sh -c 'echo ${x}' && python3 -c \"print('${x}')\""
    parsed = parse_manifest(manifest(command=command, x=x, search="{method: grid}"))
    values = {"x": 3} if x["type"] == "int" else {"x": x.get("value", 0.001)}
    out = subprocess.run(["sh", "-c", render_command(parsed.command, values)], capture_output=True, text=True)  # type: ignore[arg-type]
    assert out.stdout.split() == [printed, printed]


@pytest.mark.parametrize(
    "command",
    [
        "python train.py --x ${x}",
        "echo $(echo ${x})",
        "echo 'quoted' ${x} \"also $HOME\" # ${x} in a comment",
        "echo ${DATA_DIR} $${x} ${x}",
        "(cd /tmp && echo ${x})",
    ],
)
def test_a_bare_placeholder_is_accepted(command: str) -> None:
    parse_manifest(manifest(command=command))


@pytest.mark.parametrize("command", ["sh -c 'echo ${x}'", "echo $(echo ${x})", "echo ${x}", 'echo "${x}"'])
def test_no_value_runs_as_shell_code(command: str, tmp_path: Path) -> None:
    """What the shell runs: either the manifest is refused, or the value arrives as one inert word."""
    marker = tmp_path / "pwned"
    value = f"1'; touch {marker}; echo '"
    text = manifest(command=command, x={"type": "categorical", "values": [value, f"$(touch {marker})"]})
    try:
        parsed = parse_manifest(text)
    except ManifestError:
        return
    for v in (value, f"$(touch {marker})"):
        subprocess.run(["sh", "-c", render_command(parsed.command, {"x": v})], check=True, capture_output=True)
    assert not marker.exists()


def test_a_command_is_bounded_with_its_longest_values_filled_in() -> None:
    # Every run carries its rendered command: 1000 runs of a huge command would be gigabytes to list.
    long_value = "v" * 4000
    errors = refused(manifest(command="echo " + "${x} " * 20, x={"type": "categorical", "values": [long_value, "a"]}))
    assert errors["command"] == "with its longest values filled in is 80065 characters long; at most 65536"
    assert (
        "is 4097 characters long"
        in refused(manifest(x={"type": "categorical", "values": ["v" * 4097]}))["hyperparameters.x.values[0]"]
    )


def test_a_double_range_wider_than_a_double_holds_is_refused() -> None:
    """Each bound is finite, but max - min is not: a sampler's min + u * (max - min) would overflow."""
    errors = refused(
        manifest(x={"type": "double", "min": -1.7e308, "max": 1.7e308}, search="{method: random, max_runs: 2}")
    )
    assert "within" in errors["hyperparameters.x.max"]
