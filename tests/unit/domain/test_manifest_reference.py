"""The manifest reference (docs/manifest.md) describes exactly the fields the validator accepts.

A field added to the validator without words, a documented field the validator refuses, or an
example that does not validate fails here, so the reference cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from runyard.server.domain import manifest_parse as mp
from runyard.server.domain.manifest_reference import (
    BASE_MANIFEST,
    FIELDS,
    HYPERPARAMETER_TYPES,
    FieldDoc,
    HyperparameterDoc,
    hyperparameter_example_manifest,
)


def _children(prefix: str) -> set[str]:
    depth = prefix.count(".") + 1 if prefix else 0
    return {
        f.path.split(".")[-1]
        for f in FIELDS
        if f.path.count(".") == depth and (f.path.startswith(prefix + ".") if prefix else True)
    }


def test_every_top_level_field_of_the_validator_is_documented_and_no_other() -> None:
    assert _children("") == set(mp.TOP_LEVEL_FIELDS)


@pytest.mark.parametrize(
    ("prefix", "accepted"),
    [
        ("framework", mp.FRAMEWORK_FIELDS),
        ("resources", mp.RESOURCES_FIELDS),
        ("search", mp.SEARCH_FIELDS),
        ("search.asha", mp.ASHA_FIELDS),
        ("metrics", mp.METRICS_FIELDS),
    ],
)
def test_every_nested_field_is_documented_and_no_other(prefix: str, accepted: tuple[str, ...]) -> None:
    assert _children(prefix) == set(accepted)


def test_every_hyperparameter_type_and_its_fields_are_documented() -> None:
    assert [d.type for d in HYPERPARAMETER_TYPES] == list(mp.HYPERPARAMETER_FIELDS)
    for doc in HYPERPARAMETER_TYPES:
        assert {name for name, _, _ in doc.fields} == set(mp.HYPERPARAMETER_FIELDS[doc.type]) - {"type"}, doc.type


def _merged(fragment: str) -> str:
    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    return yaml.safe_dump(merge(yaml.safe_load(BASE_MANIFEST), yaml.safe_load(fragment)))


@pytest.mark.parametrize("doc", FIELDS, ids=lambda d: d.path)
def test_each_field_example_passes_the_validator(doc: FieldDoc) -> None:
    fragment = yaml.safe_load(doc.example)
    assert doc.path.split(".")[0] in fragment, f"the example of {doc.path} does not use it"
    mp.parse_manifest(_merged(doc.example))


@pytest.mark.parametrize("doc", HYPERPARAMETER_TYPES, ids=lambda d: d.type)
def test_each_hyperparameter_example_passes_the_validator(doc: HyperparameterDoc) -> None:
    manifest = mp.parse_manifest(_merged(hyperparameter_example_manifest(doc)))
    assert len(manifest.hyperparameters) == 1


def test_the_documented_defaults_are_the_validators() -> None:
    parsed = mp.parse_manifest(BASE_MANIFEST)
    documented = {f.path: f.default for f in FIELDS}
    assert documented["resources.gpus"] == str(parsed.resources.gpus)
    assert documented["resources.cpus"] == str(parsed.resources.cpus)
    assert documented["max_restarts"] == str(parsed.max_restarts)
    assert documented["priority"] == str(parsed.priority)
    assert documented["search.method"] == parsed.search.method
    assert documented["search.early_stopping"] == parsed.search.early_stopping
    assert documented["framework"] == parsed.framework.name
