"""Fuzzed manifests (hypothesis): a manifest is refused with ManifestError or accepted, and an accepted one
never fails later: its runs are created, its searcher starts and takes results (issue 9: a huge integer in a
hyperparameter bound was accepted, then raised OverflowError in the search driver on every pass, forever)."""

from __future__ import annotations

import math
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runyard.server.domain.errors import ManifestError
from runyard.server.domain.experiment import Experiment
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.searchers import CreateTrial, RunOutcome, is_searched, searcher_for

EXTREME_INTS = st.sampled_from([0, 1, -1, 2**31, 2**53, 2**53 + 1, 2**63, -(2**63), 10**30, -(10**400)])
NUMBERS = st.one_of(
    st.integers(-1000, 1000),
    EXTREME_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 1e300, 0.5, -0.0]),
)
TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "${x}", "'${x}'", '"${x}"', "a\x00b", "9" * 400, "1d", "99999999999d", "4Gi", "1e400"]),
)
SCALARS = st.one_of(NUMBERS, TEXT, st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)

HP_TYPES = ["const", "int", "double", "log", "categorical"]
HYPERPARAMETER = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(HP_TYPES)},
        optional={
            "min": NUMBERS,
            "max": NUMBERS,
            "step": NUMBERS,
            "count": NUMBERS,
            "base": NUMBERS,
            "value": SCALARS,
            "values": st.lists(SCALARS, max_size=6),
        },
    ),
    st.lists(SCALARS, max_size=5),
    SCALARS,
)
SEARCH = st.fixed_dictionaries(
    {"method": st.sampled_from(["single", "grid", "list", "random", "tpe", "bogus"])},
    optional={
        "max_runs": NUMBERS,
        "max_parallel": NUMBERS,
        "seed": NUMBERS,
        "metric": st.sampled_from(["loss", ""]),
        "goal": st.sampled_from(["maximize", "minimize", "up"]),
        "early_stopping": st.sampled_from(["none", "asha"]),
        "asha": st.fixed_dictionaries(
            {}, optional={"min_resource": NUMBERS, "reduction_factor": NUMBERS, "max_resource": NUMBERS}
        ),
        "max_time": st.one_of(NUMBERS, TEXT),
        "max_gpu_hours": NUMBERS,
        "runs": st.lists(st.dictionaries(st.sampled_from(["x", "y"]), SCALARS, max_size=2), max_size=3),
    },
)
MANIFEST = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["fuzz", "", "a" * 200]),
        "command": st.one_of(
            st.sampled_from(["echo ${x} ${y}", "sh -c 'echo ${x}'", "echo ${x}", 'echo "${y}"', "echo \x00"]), TEXT
        ),
        "results": st.sampled_from(["s3://r/fuzz", "file:///tmp/r", "ftp://x"]),
    },
    optional={
        "hyperparameters": st.dictionaries(st.sampled_from(["x", "y", "1bad"]), HYPERPARAMETER, max_size=2),
        "search": SEARCH,
        "resources": st.fixed_dictionaries(
            {}, optional={"gpus": NUMBERS, "cpus": NUMBERS, "memory": st.one_of(NUMBERS, TEXT)}
        ),
        "priority": NUMBERS,
        "max_restarts": NUMBERS,
        "env": st.dictionaries(st.sampled_from(["A", "B_1"]), SCALARS, max_size=2),
        "description": VALUES,
    },
)


def dump(doc: dict[str, Any]) -> str | None:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return None


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(MANIFEST)
def test_an_accepted_manifest_never_fails_downstream(doc: dict[str, Any]) -> None:
    text = dump(doc)
    if text is None:
        return
    try:
        manifest = parse_manifest(text)
    except ManifestError as refused:
        assert refused.errors and len(str(refused)) < 20_000
        return
    opened, runs = Experiment.create("exp-fuzz", "acct", manifest, text, "", "")
    for _, created in runs:
        created.SerializeToString()
    opened.SerializeToString()
    if not is_searched(manifest) and manifest.search.method != "tpe":
        return
    searcher = searcher_for(manifest, "exp-fuzz")
    decisions = searcher.start()
    for step, decision in enumerate(decisions[:3]):
        if isinstance(decision, CreateTrial):
            assert all(_finite(v) for v in decision.hyperparameters.values())
            ran = decision.run_id
            more = [*searcher.on_metric(ran, step + 1, 0.5 + step), *searcher.on_run_ended(ran, RunOutcome.COMPLETED)]
            assert all(not isinstance(d, CreateTrial) or all(map(_finite, d.hyperparameters.values())) for d in more)


def _finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(["int", "double", "log"]),
    bounds=st.lists(NUMBERS, min_size=2, max_size=2),
    method=st.sampled_from(["random", "tpe", "asha"]),
)
def test_any_accepted_range_can_be_searched(kind: str, bounds: list[Any], method: str) -> None:
    low, high = bounds
    search: dict[str, Any] = {"method": method, "max_runs": 3, "metric": "loss", "goal": "minimize"}
    if method == "asha":
        search.update(method="random", early_stopping="asha")
    doc = {
        "name": "fuzz",
        "command": "echo ${x}",
        "results": "s3://r/fuzz",
        "hyperparameters": {"x": {"type": kind, "min": low, "max": high}},
        "search": search,
    }
    test_an_accepted_manifest_never_fails_downstream.hypothesis.inner_test(doc)  # type: ignore[attr-defined]
