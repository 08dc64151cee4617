"""Facts recorded at submit, and the upcaster that gives an older ExperimentCreated the same facts on read.

Regressions caught: a reader that re-parses the manifest (the facts must hold
everything it needs: `manifest_of` gives back the validated manifest), an
upcaster that computes facts differently from submit (property: an old-shape
event of any valid manifest decodes to the facts a new one records), and an
upcaster that forgets how old readers read an unparsable manifest (lenient
priority, leaderboard goal defaulting to maximize).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runyard.server.domain import events as ev
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.experiment import Experiment, new_run
from runyard.server.domain.experiment_facts import facts_of, manifest_of, objective
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.searchers import is_searched, searcher_for
from runyard.server.domain.upcasting import legacy_facts
from runyard.v1 import events_pb2, facts_pb2

MAIN_LOG = Path(__file__).parents[2] / "integration" / "replay" / "main_696c377" / "events.jsonl"
CREATED = events_pb2.ExperimentCreated.DESCRIPTOR.full_name


def old_shape(manifest_yaml: str, name: str = "exp") -> tuple[str, bytes]:
    """An ExperimentCreated as main wrote it: no facts."""
    return ev.encode(
        events_pb2.ExperimentCreated(experiment_id="exp-1", account_id="acct", name=name, manifest_yaml=manifest_yaml)
    )


def submitted_facts(manifest_yaml: str) -> facts_pb2.ExperimentFacts:
    opened, _ = Experiment.create("exp-1", "acct", parse_manifest(manifest_yaml), manifest_yaml, "", "")
    assert opened.HasField("facts")
    return opened.facts


def upcast(manifest_yaml: str, name: str = "exp") -> events_pb2.ExperimentCreated:
    msg = ev.decode(*old_shape(manifest_yaml, name))
    assert isinstance(msg, events_pb2.ExperimentCreated)
    return msg


def test_every_experiment_main_logged_gets_the_facts_submit_records_now() -> None:
    lines = [json.loads(line) for line in MAIN_LOG.read_text(encoding="utf-8").splitlines() if line]
    created = [e for e in lines if e["type"] == CREATED]
    assert len(created) == 8
    for entry in created:
        raw = events_pb2.ExperimentCreated.FromString(base64.b64decode(entry["data"]))
        assert not raw.HasField("facts")  # written by main
        msg = ev.decode(entry["type"], base64.b64decode(entry["data"]))
        assert isinstance(msg, events_pb2.ExperimentCreated)
        if raw.name == "legacy-lenient":
            continue
        assert msg.facts == submitted_facts(raw.manifest_yaml), raw.name
        assert manifest_of(msg.name, msg.facts) == parse_manifest(raw.manifest_yaml)


def test_a_manifest_that_no_longer_validates_keeps_what_the_old_readers_made_of_it() -> None:
    legacy = "name: legacy\ncommand: python old.py\nresults: s3://r\npriority: 7\nsearch: {metric: acc}\n"
    facts = upcast(legacy).facts
    assert (facts.priority, facts.searched, facts.HasField("plan")) == (7, False, False)
    assert objective(facts) == ("acc", True)  # the leaderboard's default goal
    assert objective(upcast("search: {metric: val_loss, goal: MINIMIZE}").facts) == ("val_loss", False)
    assert objective(upcast("search: [not, a, mapping]").facts) is None
    assert objective(upcast(": : bad yaml").facts) is None
    assert upcast("priority: high\nsearch: {metric: 3}").facts.priority == 0
    assert upcast("priority: true").facts.priority == 0
    assert upcast(f"priority: {2**40}").facts.priority == 0


def test_recorded_facts_are_kept_not_recomputed_from_the_yaml() -> None:
    text = "name: n\ncommand: echo\nresults: s3://r\npriority: 5\n"
    opened, _ = Experiment.create("exp-1", "acct", parse_manifest(text), text, "", "")
    opened.facts.priority = 3  # as an admin decision recorded at submit would differ from the text
    decoded = ev.decode(*ev.encode(opened))
    assert isinstance(decoded, events_pb2.ExperimentCreated)
    assert decoded.facts.priority == 3


def test_the_upcast_is_computed_once_per_manifest_and_never_shared_between_events() -> None:
    text = "name: n\ncommand: echo\nresults: s3://r\npriority: 5\n"
    first, second = upcast(text), upcast(text)
    first.facts.priority = 99
    assert second.facts.priority == 5 and upcast(text).facts.priority == 5
    assert legacy_facts(text) == second.facts


def test_a_trial_added_from_the_facts_is_the_run_the_old_handler_made_from_the_yaml() -> None:
    text = (
        "name: s\ncommand: python t.py --lr ${lr} --n ${n}\nresults: s3://r/\nresources: {gpus: 2, memory: 1Gi}\n"
        "hyperparameters:\n  lr: {type: log, min: 1.0e-4, max: 1.0e-1}\n  n: {type: categorical, values: [1, 2.5]}\n"
        "search: {method: random, max_runs: 4, max_parallel: 1, metric: acc, goal: maximize, early_stopping: asha}\n"
        "priority: 2\nenv: {A: b}\nimage: reg/x:1\nnetwork: egress\nmax_restarts: 2\n"
    )
    experiment = Experiment.replay([upcast(text, "s")])
    added, created = experiment.add_trial(3, {"lr": 0.001, "n": 2.5})
    old = new_run("exp-1", "acct", parse_manifest(text), "", 3, {"lr": 0.001, "n": 2.5})
    assert created == old
    assert (added.run_id, added.index, dict(added.hyperparameters)) == (old.run_id, 3, {"lr": "0.001", "n": "2.5"})


# -- property: an old-shape event of any valid manifest decodes to the facts a new one records ----------------

NAMES = st.sampled_from(["lr", "hidden", "layers", "act"])
SCALAR = st.one_of(
    st.integers(-(2**53), 2**53),
    st.floats(-1e6, 1e6, allow_nan=False).filter(lambda f: f != int(f) or abs(f) < 1e6),
    st.text(alphabet="abcxyz-_.", min_size=1, max_size=8),
    st.booleans(),
)


@st.composite
def hyperparameter(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["const", "int", "double", "log", "categorical"]))
    if kind == "const":
        return {"type": "const", "value": draw(SCALAR)}
    if kind == "int":
        low = draw(st.integers(-100, 100))
        return {"type": "int", "min": low, "max": low + draw(st.integers(1, 20)), "step": draw(st.integers(1, 5))}
    if kind == "categorical":
        return {"type": "categorical", "values": draw(st.lists(SCALAR, min_size=1, max_size=4, unique_by=repr))}
    bottom = draw(st.floats(1e-4, 1.0))
    spec: dict[str, Any] = {"type": kind, "min": bottom, "max": bottom * draw(st.floats(1.5, 100.0))}
    if draw(st.booleans()):
        spec["count"] = draw(st.integers(2, 4))
    return spec


@st.composite
def manifest_doc(draw: st.DrawFn) -> dict[str, Any]:
    hps = draw(st.dictionaries(NAMES, hyperparameter(), max_size=3))
    command = "python train.py " + " ".join(f"--{n} ${{{n}}}" for n in hps)
    doc: dict[str, Any] = {"name": draw(st.sampled_from(["prop", "exp-a"])), "command": command, "results": "s3://r/p"}
    if hps:
        doc["hyperparameters"] = hps
    search: dict[str, Any] = {"method": draw(st.sampled_from(["grid", "random", "tpe", "list"]))}
    if search["method"] in ("random", "tpe"):
        search["max_runs"] = draw(st.integers(1, 6))
        search["seed"] = draw(st.integers(0, 2**31))
    if search["method"] == "list":
        varying = {n: s for n, s in hps.items() if s["type"] == "categorical"}
        search["runs"] = [{n: s["values"][0] for n, s in varying.items()}]
    if draw(st.booleans()) or search["method"] == "tpe":
        search["metric"] = draw(st.sampled_from(["acc", "val_loss"]))
        search["goal"] = draw(st.sampled_from(["maximize", "minimize"]))
        if search["method"] != "tpe" and draw(st.booleans()):
            search["early_stopping"] = "asha"
            search["asha"] = {"min_resource": draw(st.integers(1, 3)), "reduction_factor": draw(st.integers(2, 4))}
    if draw(st.booleans()):
        search["max_parallel"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        search["max_time"] = draw(st.sampled_from(["1h", "2d", 90]))
    if draw(st.booleans()):
        search["max_gpu_hours"] = draw(st.floats(0.5, 1000))
    doc["search"] = search
    optional = {
        "priority": st.integers(-100, 100),
        "resources": st.fixed_dictionaries(
            {"gpus": st.integers(0, 8), "cpus": st.integers(1, 16), "memory": st.sampled_from(["1Gi", "512Mi"])}
        ),
        "max_restarts": st.integers(0, 3),
        "env": st.dictionaries(st.sampled_from(["A", "B_1"]), st.text(alphabet="xyz", max_size=3), max_size=2),
        "data": st.just("s3://data/d"),
        "description": st.text(alphabet="ab ", max_size=10),
        "framework": st.sampled_from([{"name": "pytorch", "version": "2.13"}, {"name": "tensorflow"}]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(manifest_doc())
def test_an_old_event_of_any_manifest_decodes_to_the_facts_a_new_one_records(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        manifest = parse_manifest(text)
    except ManifestError:
        assume(False)
        return
    new_facts = submitted_facts(text)
    old = upcast(text, manifest.name)
    assert old.facts == new_facts
    assert new_facts == facts_of(manifest)
    rebuilt = manifest_of(manifest.name, old.facts)
    assert rebuilt == manifest
    # What the readers take from the facts is what they took from the YAML.
    assert (new_facts.priority, new_facts.searched) == (manifest.priority, is_searched(manifest))
    if manifest.search.metric:
        assert objective(new_facts) == (manifest.search.metric, manifest.search.goal == "maximize")
    if is_searched(manifest):
        assert rebuilt is not None
        from_facts = searcher_for(rebuilt, "exp-1").start()
        from_yaml = searcher_for(manifest, "exp-1").start()
        assert from_facts == from_yaml
