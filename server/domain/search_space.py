"""Hyperparameter search: which assignments an experiment's runs get, in run order.

Every method is a pure function of the manifest, so recreating an experiment
(a retried create, a replayed log) yields the same runs: grid enumerates the
product in the order the hyperparameters are written (the last varies
fastest), list takes the user's runs as given, random draws from
`random.Random(seed)`. Generated floats are rounded to 12 significant digits so
commands read `--lr 0.001`, not `--lr 0.0010000000000000002`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping

from runyard.server.domain.manifest_model import (
    Categorical,
    Const,
    DoubleRange,
    Hyperparameter,
    IntRange,
    LogRange,
    Manifest,
    Scalar,
)

Trial = dict[str, Scalar]


def _tidy(x: float, low: float, high: float) -> float:
    return min(max(float(f"{x:.12g}"), low), high)


def _spaced(low: float, high: float, count: int, base: float | None) -> list[float]:
    if count == 1:
        return [low]
    if base is None:
        inner = [low + (high - low) * i / (count - 1) for i in range(1, count - 1)]
    else:
        lo, hi = math.log(low, base), math.log(high, base)
        inner = [base ** (lo + (hi - lo) * i / (count - 1)) for i in range(1, count - 1)]
    return [low, *(_tidy(x, low, high) for x in inner), high]


def int_count(hp: IntRange) -> int:
    return (hp.max - hp.min) // hp.step + 1


def grid_count(hp: Hyperparameter) -> int | None:
    """How many grid points a hyperparameter has; None when it needs `count` to be enumerable."""
    if isinstance(hp, Const):
        return 1
    if isinstance(hp, Categorical):
        return len(hp.values)
    if isinstance(hp, IntRange):
        return int_count(hp)
    return hp.count


def grid_size(hyperparameters: Mapping[str, Hyperparameter]) -> int | None:
    size = 1
    for hp in hyperparameters.values():
        count = grid_count(hp)
        if count is None:
            return None
        size *= count
    return size


def grid_values(hp: Hyperparameter) -> list[Scalar]:
    if isinstance(hp, Const):
        return [hp.value]
    if isinstance(hp, Categorical):
        return list(hp.values)
    if isinstance(hp, IntRange):
        return list(range(hp.min, hp.max + 1, hp.step))
    if hp.count is None:
        raise ValueError("a double or log hyperparameter needs `count` for a grid")
    base = hp.base if isinstance(hp, LogRange) else None
    return list(_spaced(hp.min, hp.max, hp.count, base))


def sample(hp: Hyperparameter, rng: random.Random) -> Scalar:
    if isinstance(hp, Const):
        return hp.value
    if isinstance(hp, Categorical):
        return rng.choice(hp.values)
    if isinstance(hp, IntRange):
        return hp.min + hp.step * rng.randrange(int_count(hp))
    if isinstance(hp, DoubleRange):
        return _tidy(rng.uniform(hp.min, hp.max), hp.min, hp.max)
    lo, hi = math.log(hp.min, hp.base), math.log(hp.max, hp.base)
    return _tidy(hp.base ** rng.uniform(lo, hi), hp.min, hp.max)


def same_value(a: Scalar, b: Scalar) -> bool:
    """Equality that keeps YAML's types apart: true is not 1, "1" is not 1, but 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return a == b


def value_key(value: Scalar) -> tuple[str, object]:
    """A hashable key with `same_value`'s equality: keys are equal exactly when the values are the same."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return ("str", value)
    return ("number", value)  # 1 and 1.0 hash and compare equal, as same_value says


def value_error(hp: Hyperparameter, value: Scalar) -> str | None:
    """Why `value` is outside the hyperparameter's space, or None when it is inside."""
    if isinstance(hp, Const):
        return None if same_value(hp.value, value) else f"must be the const value {hp.value!r}"
    if isinstance(hp, Categorical):
        return None if any(same_value(v, value) for v in hp.values) else f"must be one of {list(hp.values)!r}"
    if isinstance(value, bool | str):
        return "must be a number"
    if isinstance(hp, IntRange):
        if not isinstance(value, int):
            return "must be an integer"
        if not hp.min <= value <= hp.max or (value - hp.min) % hp.step:
            return f"must be an integer from {hp.min} to {hp.max} in steps of {hp.step}"
        return None
    if not math.isfinite(value) or not hp.min <= value <= hp.max:
        return f"must be between {hp.min} and {hp.max}"
    return None


def expand_trials(manifest: Manifest) -> list[Trial]:
    """The hyperparameter assignment of every run, in run order."""
    hps = manifest.hyperparameters
    search = manifest.search
    if search.method == "tpe":
        raise ValueError("tpe search picks its trials one by one from results: there is no list of them up front")
    if search.method == "list":
        return [dict(run) for run in search.runs]
    if search.method == "random":
        rng = random.Random(search.seed)
        count = search.max_runs if search.max_runs is not None else 1
        return [{name: sample(hp, rng) for name, hp in hps.items()} for _ in range(count)]
    names = list(hps)
    product = itertools.product(*(grid_values(hps[n]) for n in names))
    return [dict(zip(names, values, strict=True)) for values in product]
