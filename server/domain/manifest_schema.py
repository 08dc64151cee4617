"""The manifest as a JSON Schema (draft 2020-12): completion and early red squiggles in an editor.

`runyard schema manifest` prints it; a manifest that starts with
`# yaml-language-server: $schema=manifest.schema.json` gets completion, hovers
and checks from the YAML language server (VS Code, Neovim, JetBrains).

Built, not written: the field lists, choices and limits come from the validator
(`manifest_parse`, `manifest_model`, `manifest_limits`) and the words from
`manifest_reference`; a field the validator accepts without a schema here is a
KeyError when the schema is built, and the tests build it. The schema is a
superset of the validator: it never refuses a manifest the validator accepts
(a property test holds it to that), while what JSON Schema cannot say (a
placeholder naming no hyperparameter, a grid larger than max_runs, min <= max,
text that cannot be stored) is left to `runyard validate` and the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from runyard.server.domain import manifest_limits as limits
from runyard.server.domain import manifest_parse as mp
from runyard.server.domain.manifest_model import (
    EARLY_STOPPING,
    FRAMEWORKS,
    GOALS,
    MAX_RUNS_PER_EXPERIMENT,
    NETWORKS,
    SEARCH_METHODS,
)
from runyard.server.domain.manifest_reference import FIELDS, HYPERPARAMETER_TYPES, REQUIRED
from runyard.server.domain.units import SIZE_PATTERN

Schema = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Where `runyard schema manifest > manifest.schema.json` is meant to be saved; the $id names no web page.
SCHEMA_ID = "urn:runyard:schema:manifest:v1"

_SAFE = limits.MAX_SAFE_INTEGER
_DOCS = {f.path: f for f in FIELDS}
_HP_DOCS = {d.type: d for d in HYPERPARAMETER_TYPES}


def _whole(pattern: re.Pattern[str]) -> str:
    """A validator regex used with fullmatch, as a JSON Schema pattern (which searches)."""
    return f"^(?:{pattern.pattern.removeprefix('^').removesuffix('$')})$"


def _integer(minimum: int = -_SAFE, maximum: int = _SAFE) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def _nullable(schema: Schema) -> Schema:
    """The validator treats an explicit null as absent for this field.

    A list of types, not `anyOf` with null: each keyword applies only to its own type, so the
    schema's errors stay at the field that is wrong instead of "not valid under any of" above it.
    """
    types = schema["type"]
    return {**schema, "type": [*(types if isinstance(types, list) else [types]), "null"]}


def _mapping(properties: Mapping[str, Schema], fields: Sequence[str], required: Sequence[str] = ()) -> Schema:
    """A closed mapping with exactly the validator's `fields`: a missing schema is a KeyError, an extra one too."""
    extra = set(properties) - set(fields)
    if extra:
        raise KeyError(f"schema for fields the validator does not accept: {sorted(extra)}")
    schema: Schema = {
        "type": "object",
        "properties": {name: properties[name] for name in fields},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _scalar() -> Schema:
    """A hyperparameter or env value. Integers are bounded to 2**53 by the validator, floats only to finite:
    a bound here would refuse 1e20, which the validator takes."""
    return {"type": ["string", "boolean", "number"], "maxLength": limits.MAX_VALUE_CHARS}


def _uri() -> Schema:
    return {
        "type": "string",
        "pattern": rf"^(?:s3://{mp._BUCKET.pattern}(?:/[^\s\x00-\x1f]*)?|file:///[^\s\x00-\x1f]*)$",
    }


_IDENTIFIER = _whole(mp._IDENTIFIER)


def _framework() -> Schema:
    mapping = _mapping(
        {
            "name": {"enum": list(FRAMEWORKS)},
            "version": _nullable(
                {"type": "string", "maxLength": limits.MAX_VERSION_CHARS, "pattern": _whole(mp._VERSION)}
            ),
        },
        mp.FRAMEWORK_FIELDS,
        required=["name"],
    )
    # The name alone, or the mapping: each keyword applies to its own type (enum through if/then: it has none).
    return {
        **mapping,
        "type": ["string", "object", "null"],
        "if": {"type": "string"},
        "then": {"enum": list(FRAMEWORKS)},
    }


def _resources() -> Schema:
    size = {"type": "string", "pattern": rf"^\s*{SIZE_PATTERN}\s*$"}
    labels = {
        "type": "object",
        "propertyNames": {"pattern": _whole(mp._LABEL)},
        "additionalProperties": {"type": ["string", "integer"]},
    }
    return _nullable(
        _mapping(
            {
                "gpus": _integer(0, mp.MAX_GPUS),
                "cpus": _integer(1, mp.MAX_CPUS),
                "memory": {**_integer(1, _SAFE), **size, "type": ["integer", "string"]},
                "gpu_model": _nullable({"type": "string", "pattern": r"\S"}),
                "labels": _nullable(labels),
            },
            mp.RESOURCES_FIELDS,
        )
    )


def _hyperparameter_types() -> dict[str, Schema]:
    number: Schema = {"type": "number"}
    count = _integer(1, _SAFE)
    values = {"type": "array", "minItems": 1, "maxItems": limits.MAX_VALUES_PER_HYPERPARAMETER, "items": _scalar()}
    fields: dict[str, dict[str, Schema]] = {
        "const": {"value": _scalar()},
        "int": {"min": _integer(), "max": _integer(), "step": _integer(1, _SAFE)},
        "double": {"min": number, "max": number, "count": count},
        "log": {
            "min": {"type": "number", "exclusiveMinimum": 0},
            "max": number,
            "base": {"type": "number", "exclusiveMinimum": 0, "not": {"const": 1}},
            "count": count,
        },
        "categorical": {"values": values},
    }
    typed: dict[str, Schema] = {}
    for kind, allowed in mp.HYPERPARAMETER_FIELDS.items():
        doc = _HP_DOCS[kind]
        properties: dict[str, Schema] = {"type": {"const": kind, "description": f"{kind}: {doc.text}"}}
        required = ["type"]
        for name, default, what in doc.fields:
            properties[name] = {**fields[kind][name], "description": f"{what}; {_default_words(default)}."}
            if default == REQUIRED:
                required.append(name)
        schema = _mapping(properties, allowed, required=required)
        typed[kind] = {"description": f"{doc.text} Example: `{doc.example}`", **schema}
    return typed


def _hyperparameters(typed: Mapping[str, Schema]) -> Schema:
    # A mapping with a `type`, a list (short for categorical) or a single value (short for const). The mapping's
    # fields are chosen by its `type` through if/then, so an error names the field (`hyperparameters.lr.min`).
    spec = {
        "type": ["object", "array", "string", "number", "boolean"],
        "description": "A mapping with a `type` (" + ", ".join(typed) + "); a list, short for categorical; "
        "or one value, short for const.",
        "required": ["type"],
        "properties": {"type": {"enum": list(typed)}},
        "allOf": [
            {"if": {"type": "object", "required": ["type"], "properties": {"type": {"const": kind}}},
             "then": {"$ref": f"#/$defs/hyperparameter_{kind}"}}
            for kind in typed
        ],
        "minItems": 1,
        "maxItems": limits.MAX_VALUES_PER_HYPERPARAMETER,
        "items": _scalar(),
        "maxLength": limits.MAX_VALUE_CHARS,
    }  # fmt: skip
    return _nullable(
        {
            "type": "object",
            "maxProperties": limits.MAX_HYPERPARAMETERS,
            "propertyNames": {"pattern": _IDENTIFIER},
            "additionalProperties": spec,
        }
    )


def _search() -> Schema:
    asha = _mapping(
        {
            "min_resource": _integer(1, _SAFE),
            "reduction_factor": _integer(2, _SAFE),
            "max_resource": _integer(1, _SAFE),
            "time_unit": {"enum": list(mp.TIME_UNITS)},
            "mode": {"enum": list(mp.ASHA_MODES)},
        },
        mp.ASHA_FIELDS,
    )
    asha["allOf"] = [_when({"mode": {"const": "pause"}}, required=["max_resource"])]
    duration = {
        "type": ["number", "string"],
        "exclusiveMinimum": 0,
        "maximum": limits.MAX_DURATION_S,
        "pattern": mp._DURATION.pattern,
    }
    schema = _mapping(
        {
            "method": {"enum": list(SEARCH_METHODS)},
            "max_runs": _integer(1, MAX_RUNS_PER_EXPERIMENT),
            "max_parallel": _integer(1, _SAFE),
            "runs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "propertyNames": {"pattern": _IDENTIFIER},
                    "additionalProperties": _scalar(),
                },
            },
            "seed": _integer(),
            "metric": {"type": "string", "minLength": 1},
            "goal": {"enum": list(GOALS)},
            "early_stopping": {"enum": list(EARLY_STOPPING)},
            "asha": asha,
            "max_time": duration,
            "max_gpu_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": limits.MAX_GPU_HOURS},
        },
        mp.SEARCH_FIELDS,
    )
    # The validator's rules between search fields that JSON Schema can say (manifest_parse._Parser.search).
    schema["dependentRequired"] = {"metric": ["goal"], "goal": ["metric"]}
    schema["allOf"] = [
        _when({"method": {"enum": ["random", "tpe"]}}, required=["max_runs"]),
        _when({"method": {"const": "tpe"}}, required=["metric"]),
        _when({"method": {"const": "list"}}, required=["runs"]),
        _when({"runs": {}}, required=["method"], properties={"method": {"const": "list"}}),
        _when({"early_stopping": {"const": "asha"}}, required=["metric"]),
        _when({"asha": {}}, required=["early_stopping"], properties={"early_stopping": {"const": "asha"}}),
    ]
    return _nullable(schema)


def _when(
    condition: Mapping[str, Schema], required: Sequence[str], properties: Mapping[str, Schema] | None = None
) -> Schema:
    """If these fields are present and match, then `required` are present (and match `properties`)."""
    then: Schema = {"required": list(required)}
    if properties:
        then["properties"] = dict(properties)
    return {"if": {"required": list(condition), "properties": dict(condition)}, "then": then}


def _metrics() -> Schema:
    patterns = {"type": "array", "items": {"type": "string"}}
    return _nullable(_mapping({"patterns": _nullable(patterns)}, mp.METRICS_FIELDS))


def _env() -> Schema:
    names = {
        "pattern": _IDENTIFIER,
        "not": {"anyOf": [{"enum": list(mp.RESERVED_ENV)}, {"pattern": "^RUNYARD_"}]},
    }
    return _nullable({"type": "object", "propertyNames": names, "additionalProperties": _scalar()})


def _top_level() -> dict[str, Schema]:
    return {
        "name": {"type": "string", "pattern": _whole(mp._NAME)},
        "description": {"type": "string"},
        "framework": _framework(),
        "command": {"type": "string", "pattern": r"\S"},
        "resources": _resources(),
        "data": _nullable(_uri()),
        "results": _uri(),
        "hyperparameters": _hyperparameters(_hyperparameter_types()),
        "search": _search(),
        "metrics": _metrics(),
        "max_restarts": _integer(0, mp.MAX_RESTARTS),
        "env": _env(),
        "priority": _integer(-mp.MAX_PRIORITY, mp.MAX_PRIORITY),
        "image": _nullable({"type": "string", "maxLength": limits.MAX_IMAGE_CHARS, "pattern": _whole(mp._IMAGE)}),
        "network": {"enum": list(NETWORKS)},
        "preemptible": _nullable({"type": "boolean"}),
        "preemption": _nullable(
            _mapping(
                {
                    "grace": _nullable(
                        {
                            "type": ["number", "string"],
                            "exclusiveMinimum": 0,
                            "maximum": mp.MAX_PREEMPTION_GRACE_S,
                            "pattern": mp._DURATION.pattern,
                        }
                    )
                },
                mp.PREEMPTION_FIELDS,
            )
        ),
        "from_run": _nullable({"type": "string", "pattern": _whole(mp.RUN_ID)}),
    }


def _default_words(default: str) -> str:
    """manifest_reference's default column as words: "required", "required for grid", "default 10"."""
    return default if default.startswith(REQUIRED) else f"default {default}"


def _describe(schema: Schema, path: str) -> None:
    """Add manifest_reference's words to the field at `path` and, below it, its subfields."""
    doc = _DOCS.get(path)
    if doc is not None:
        default = f" {_default_words(doc.default).capitalize()}." if doc.default != "see below" else ""
        schema["description"] = f"{doc.text}{default}"
        schema["markdownDescription"] = f"{doc.text}{default}\n\n```yaml\n{doc.example}\n```"
    for name, sub in schema.get("properties", {}).items():
        _describe(sub, f"{path}.{name}" if path else name)


def manifest_schema() -> Schema:
    """The JSON Schema of a manifest, as a JSON-ready dict (a new one each call)."""
    top = _mapping(_top_level(), mp.TOP_LEVEL_FIELDS, required=["name", "command", "results"])
    _describe(top, "")
    typed = _hyperparameter_types()
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "Runyard experiment manifest",
        "description": "One experiment: what each run executes, what it needs, and how runs are made from "
        "the hyperparameters. Check one with `runyard validate MANIFEST`.",
        **top,
        "$defs": {f"hyperparameter_{kind}": schema for kind, schema in typed.items()},
    }
