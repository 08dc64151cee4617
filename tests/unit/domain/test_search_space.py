"""How a manifest expands into runs, and how each run's command is written."""

from __future__ import annotations

import itertools
import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runyard.server.domain.manifest import expand_trials, parse_manifest, render_command
from runyard.server.domain.search_space import value_error

HEADER = "name: sweep\nresults: s3://r/sweep\n"


def trials(body: str) -> list[dict[str, object]]:
    return [dict(t) for t in expand_trials(parse_manifest(HEADER + body))]


def test_no_hyperparameters_is_one_run() -> None:
    assert trials("command: python train.py\n") == [{}]


def test_const_hyperparameters_are_one_run() -> None:
    assert trials("command: train ${epochs}\nhyperparameters: {epochs: 5, name: {type: const, value: x}}\n") == [
        {"epochs": 5, "name": "x"}
    ]


def test_grid_enumerates_exactly_the_product_in_written_order() -> None:
    got = trials(
        """
command: train ${lr} ${hidden} ${layers} ${act} ${epochs}
hyperparameters:
  lr: {type: log, min: 1.0e-4, max: 1.0e-1, count: 4}
  hidden: [64, 128]
  layers: {type: int, min: 1, max: 5, step: 2}
  act: {type: categorical, values: [relu, tanh]}
  epochs: 3
search: {method: grid}
"""
    )
    lrs = [0.0001, 0.001, 0.01, 0.1]
    expected = [
        {"lr": lr, "hidden": h, "layers": n, "act": a, "epochs": 3}
        for lr, h, n, a in itertools.product(lrs, [64, 128], [1, 3, 5], ["relu", "tanh"])
    ]
    assert got == expected
    assert len(got) == 4 * 2 * 3 * 2


def test_grid_over_a_double_range_spaces_points_evenly() -> None:
    got = trials(
        "command: t ${p}\nhyperparameters: {p: {type: double, min: 0, max: 0.5, count: 6}}\nsearch: {method: grid}\n"
    )
    assert [t["p"] for t in got] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_list_takes_the_runs_as_written_with_consts_filled_in() -> None:
    got = trials(
        """
command: train ${lr} ${hidden} ${epochs}
hyperparameters:
  lr: {type: double, min: 0.0, max: 1.0}
  hidden: [64, 128]
  epochs: 3
search:
  method: list
  runs:
    - {lr: 0.1, hidden: 128}
    - {lr: 1, hidden: 64}
"""
    )
    assert got == [{"lr": 0.1, "hidden": 128, "epochs": 3}, {"lr": 1.0, "hidden": 64, "epochs": 3}]
    assert isinstance(got[1]["lr"], float)


RANDOM = """
command: train ${lr} ${hidden} ${layers} ${dropout}
hyperparameters:
  lr: {type: log, min: 1.0e-5, max: 1.0e-1}
  hidden: [64, 128, 256]
  layers: {type: int, min: 2, max: 12, step: 2}
  dropout: {type: double, min: 0.1, max: 0.5}
"""


def test_random_is_reproducible_from_its_seed() -> None:
    first = trials(RANDOM + "search: {method: random, max_runs: 25, seed: 7}\n")
    assert len(first) == 25
    assert first == trials(RANDOM + "search: {method: random, max_runs: 25, seed: 7}\n")
    assert first != trials(RANDOM + "search: {method: random, max_runs: 25, seed: 8}\n")
    default_seed = trials(RANDOM + "search: {method: random, max_runs: 25}\n")
    assert default_seed == trials(RANDOM + "search: {method: random, max_runs: 25, seed: 0}\n")


@given(seed=st.integers(min_value=0, max_value=2**32))
def test_random_samples_stay_inside_the_space(seed: int) -> None:
    manifest = parse_manifest(HEADER + RANDOM + f"search: {{method: random, max_runs: 20, seed: {seed}}}\n")
    for trial in expand_trials(manifest):
        for name, hp in manifest.hyperparameters.items():
            assert value_error(hp, trial[name]) is None, (name, trial[name])
        assert isinstance(trial["layers"], int) and trial["layers"] % 2 == 0


def test_random_explores_the_log_scale() -> None:
    lrs = [t["lr"] for t in trials(RANDOM + "search: {method: random, max_runs: 200}\n")]
    decades = {len(str(int(1 / lr))) for lr in lrs if isinstance(lr, float)}
    assert decades >= {2, 3, 4, 5}, "log-uniform draws cover every decade, not mostly the top one"


# -- commands ------------------------------------------------------------------


def test_values_are_written_as_a_user_expects() -> None:
    assert render_command("t --lr ${lr} --n ${n} --on ${on}", {"lr": 0.001, "n": 64, "on": True}) == (
        "t --lr 0.001 --n 64 --on true"
    )


def test_values_are_shell_quoted() -> None:
    rendered = render_command("python t.py --act ${act}", {"act": "relu; rm -rf /"})
    assert rendered == "python t.py --act 'relu; rm -rf /'"
    assert shlex.split(rendered) == ["python", "t.py", "--act", "relu; rm -rf /"]


@given(value=st.one_of(st.text(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans()))
def test_any_value_reaches_the_script_as_one_argument(value: str | int | float | bool) -> None:
    rendered = render_command("prog --x ${x} end", {"x": value})
    (argument,) = shlex.split(rendered)[2:-1]
    expected = ("true" if value else "false") if isinstance(value, bool) else str(value)
    assert argument == (repr(value) if isinstance(value, float) else expected)


def test_environment_variables_and_escapes_are_left_for_the_shell() -> None:
    template = "t --data ${DATA_DIR} --out $RESULT_DIR --x ${x} --literal $${x} --default ${y:-1}"
    assert (
        render_command(template, {"x": 3})
        == "t --data ${DATA_DIR} --out $RESULT_DIR --x 3 --literal ${x} --default ${y:-1}"
    )


def test_an_unknown_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\$\{hidden\}"):
        render_command("t ${hidden}", {"lr": 0.1})
