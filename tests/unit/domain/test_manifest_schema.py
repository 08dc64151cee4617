"""The manifest's JSON Schema agrees with the validator: what the validator accepts the schema accepts (an editor
never flags a good manifest), and the bad manifests below are refused by both, each at the field that is wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from runyard.server.domain import manifest_parse as mp
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.manifest import load_yaml, parse_manifest
from runyard.server.domain.manifest_reference import (
    FIELDS,
    HYPERPARAMETER_TYPES,
    hyperparameter_example_manifest,
)
from runyard.server.domain.manifest_schema import manifest_schema
from tests.unit.domain.test_manifest import BASE, DESIGN_EXAMPLE
from tests.unit.domain.test_manifest_fuzz import MANIFEST, dump
from tests.unit.domain.test_manifest_reference import _merged

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(manifest_schema())


def schema_errors(text: str) -> list[str]:
    """The schema's complaints as dotted field paths (the validator's spelling)."""
    out = []
    for error in VALIDATOR.iter_errors(load_yaml(text)):
        path = ""
        for part in error.absolute_path:
            path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else str(part))
        out.append(path)
    return out


def test_it_is_a_valid_draft_2020_12_schema() -> None:
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    json.dumps(schema)  # plain JSON, nothing Python-only


def test_it_names_every_field_the_validator_accepts_and_no_other() -> None:
    schema = manifest_schema()
    props = schema["properties"]

    def closed(node: dict[str, Any]) -> dict[str, Any]:
        """A field's mapping form: closed, its keys only."""
        assert node["additionalProperties"] is False
        return node

    assert list(props) == list(mp.TOP_LEVEL_FIELDS)
    assert list(closed(props["framework"])["properties"]) == list(mp.FRAMEWORK_FIELDS)
    assert list(closed(props["resources"])["properties"]) == list(mp.RESOURCES_FIELDS)
    search = closed(props["search"])
    assert list(search["properties"]) == list(mp.SEARCH_FIELDS)
    assert list(search["properties"]["asha"]["properties"]) == list(mp.ASHA_FIELDS)
    assert list(closed(props["metrics"])["properties"]) == list(mp.METRICS_FIELDS)
    for kind, fields in mp.HYPERPARAMETER_FIELDS.items():
        assert list(schema["$defs"][f"hyperparameter_{kind}"]["properties"]) == list(fields)


def test_the_choices_and_limits_are_the_validators() -> None:
    schema = manifest_schema()
    resources = schema["properties"]["resources"]["properties"]
    assert resources["gpus"]["maximum"] == mp.MAX_GPUS
    assert schema["properties"]["priority"]["minimum"] == -mp.MAX_PRIORITY
    assert schema["properties"]["network"]["enum"] == ["none", "egress"]
    assert "required" not in resources


def test_every_field_has_the_reference_words() -> None:
    text = json.dumps(manifest_schema())
    for doc in FIELDS:
        assert json.dumps(doc.text)[1:-1] in text, doc.path


# -- good manifests pass both ------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_passes_the_schema_and_the_validator(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    parse_manifest(text)
    assert schema_errors(text) == []


def test_the_test_suites_manifests_pass_the_schema() -> None:
    texts = [DESIGN_EXAMPLE, yaml.safe_dump(BASE)]
    texts += [_merged(doc.example) for doc in FIELDS]
    texts += [_merged(hyperparameter_example_manifest(doc)) for doc in HYPERPARAMETER_TYPES]
    for text in texts:
        parse_manifest(text)
        assert schema_errors(text) == [], text


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(MANIFEST)
def test_what_the_validator_accepts_the_schema_accepts(doc: dict[str, Any]) -> None:
    text = dump(doc)
    if text is None:
        return
    try:
        parse_manifest(text)
    except ManifestError:
        return
    assert schema_errors(text) == [], text


# -- bad manifests fail both, at the same field -----------------------------------------------------------


def _with(path: str, value: Any) -> str:
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return yaml.safe_dump(doc)


DELETE = object()

BAD: list[tuple[str, str, str]] = [
    ("missing name", _with("name", DELETE), "name"),
    ("name with a space", _with("name", "bad name"), "name"),
    ("unknown top-level field", _with("colour", "blue"), "colour"),
    ("gpus as a word", _with("resources.gpus", "two"), "resources.gpus"),
    ("negative gpus", _with("resources.gpus", -1), "resources.gpus"),
    ("too many gpus", _with("resources.gpus", mp.MAX_GPUS + 1), "resources.gpus"),
    ("zero cpus", _with("resources.cpus", 0), "resources.cpus"),
    ("memory not a size", _with("resources.memory", "lots"), "resources.memory"),
    ("unknown resource", _with("resources.tpus", 1), "resources.tpus"),
    ("framework not offered", _with("framework.name", "jax"), "framework.name"),
    ("framework version as a number", _with("framework.version", 2.13), "framework.version"),
    ("results on ftp", _with("results", "ftp://host/x"), "results"),
    ("s3 without a bucket", _with("data", "s3:///x"), "data"),
    ("log scale from zero", _with("hyperparameters.lr.min", 0), "hyperparameters.lr.min"),
    ("log base zero", _with("hyperparameters.lr.base", 0), "hyperparameters.lr.base"),
    ("int step zero", _with("hyperparameters.layers.step", 0), "hyperparameters.layers.step"),
    ("empty categorical", _with("hyperparameters.hidden.values", []), "hyperparameters.hidden.values"),
    ("unknown hyperparameter type", _with("hyperparameters.hidden.type", "choice"), "hyperparameters.hidden.type"),
    ("unknown search method", _with("search.method", "bayes"), "search.method"),
    ("max_runs zero", _with("search.max_runs", 0), "search.max_runs"),
    ("goal without metric", _with("search.goal", "maximize"), "search.metric"),
    ("reserved env", _with("env.RESULT_DIR", "/tmp"), "env.RESULT_DIR"),
    ("restarts beyond the cap", _with("max_restarts", mp.MAX_RESTARTS + 1), "max_restarts"),
    ("priority as text", _with("priority", "high"), "priority"),
    ("network unknown", _with("network", "host"), "network"),
    ("image with spaces", _with("image", "my image"), "image"),
]


@pytest.mark.parametrize(("text", "field"), [(t, f) for _, t, f in BAD], ids=[n for n, _, _ in BAD])
def test_a_bad_manifest_is_refused_by_both(text: str, field: str) -> None:
    with pytest.raises(ManifestError) as refused:
        parse_manifest(text)
    assert field in refused.value.fields, refused.value
    errors = schema_errors(text)
    assert errors, "the schema accepted it"
    # The schema names the field, or the mapping that holds it (a missing or unknown key is the mapping's error).
    parent = field.rsplit(".", 1)[0] if "." in field else ""
    assert field in errors or parent in errors, errors


def test_random_search_without_max_runs_is_refused_by_both() -> None:
    text = _with("search", {"method": "random"})
    with pytest.raises(ManifestError) as refused:
        parse_manifest(text)
    assert "search.max_runs" in refused.value.fields
    assert "search" in schema_errors(text)
