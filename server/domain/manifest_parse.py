"""Manifest validation: YAML text in, a `Manifest` out, or every bad field at once.

A user fixing a manifest should see all of its problems in one answer, each
under the dotted path of the field ("hyperparameters.lr.min",
"search.runs[2].hidden"), so validation never stops at the first error: each
check records what is wrong and returns a harmless default, and the
ManifestError is raised at the end if anything was recorded.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any, cast

import yaml

from runyard.server.domain import manifest_limits as limits
from runyard.server.domain.command_quoting import needs_quoting, quoting_problems
from runyard.server.domain.command_template import format_value, unknown_placeholders
from runyard.server.domain.errors import FieldError, ManifestError
from runyard.server.domain.manifest_model import (
    EARLY_STOPPING,
    FRAMEWORKS,
    GOALS,
    MAX_RUNS_PER_EXPERIMENT,
    NETWORKS,
    SEARCH_METHODS,
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
from runyard.server.domain.search_space import grid_count, grid_size, value_error, value_key
from runyard.server.domain.units import parse_size

_FieldParser = Callable[[str, object], str]
_NumberParser = Callable[[str, object], float | None]

TOP_LEVEL_FIELDS = (
    "name",
    "description",
    "framework",
    "command",
    "resources",
    "data",
    "results",
    "hyperparameters",
    "search",
    "metrics",
    "max_restarts",
    "env",
    "priority",
    "image",
    "network",
    "preemptible",
    "preemption",
    "from_run",
)
HYPERPARAMETER_FIELDS: dict[str, tuple[str, ...]] = {
    "const": ("type", "value"),
    "int": ("type", "min", "max", "step"),
    "double": ("type", "min", "max", "count"),
    "log": ("type", "min", "max", "base", "count"),
    "categorical": ("type", "values"),
}
SEARCH_FIELDS = (
    "method",
    "max_runs",
    "max_parallel",
    "runs",
    "seed",
    "metric",
    "goal",
    "early_stopping",
    "asha",
    "max_time",
    "max_gpu_hours",
)
FRAMEWORK_FIELDS = ("name", "version")
RESOURCES_FIELDS = ("gpus", "cpus", "memory", "gpu_model", "labels")
METRICS_FIELDS = ("patterns",)
PREEMPTION_FIELDS = ("grace",)
#: The longest SIGTERM-to-SIGKILL grace a preempted run may ask for: its GPUs stay idle for the taker meanwhile.
MAX_PREEMPTION_GRACE_S = 3600
ASHA_FIELDS = ("min_resource", "reduction_factor", "max_resource", "time_unit", "mode")
TIME_UNITS = ("epochs", "steps")
ASHA_MODES = ("stop", "pause")
#: "90s", "30m", "2h", "1d" (or a plain number of seconds).
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Set by the agent for every run; a manifest overriding them would break staging or GPU pinning.
RESERVED_ENV = ("DATA_DIR", "RESULT_DIR", "CHECKPOINT_DIR", "CUDA_VISIBLE_DEVICES")
MAX_RESTARTS = 100
MAX_GPUS = 1024
MAX_CPUS = 4096
MAX_PRIORITY = 1000
_LABEL = re.compile(r"[A-Za-z0-9._/-]{1,63}")

_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: A run id as Runyard makes them ("run-" and base32), for `from_run`.
RUN_ID = re.compile(r"run-[a-z0-9]{1,60}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: An OCI image reference: [host[:port]/]path[:tag][@algorithm:hex], the grammar of distribution/reference.
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?/)?"
    rf"{_IMAGE_PATH}(?:/{_IMAGE_PATH})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,})?"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")


#: libyaml's safe loader where PyYAML was built with it (its wheels are): a rebuild parses every stored manifest.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, through libyaml when it is there (several times faster, the same documents)."""
    return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader: SafeLoader or CSafeLoader


def parse_manifest(text: str, *, stored: bool = False) -> Manifest:
    """Validate a manifest; raises ManifestError naming every bad field.

    `stored`: the manifest is re-read from the log, where its command was
    judged at submit: the command quoting rules (`command_quoting`) are not
    applied again, so a scanner that grew stricter since never refuses an
    experiment already accepted (its values are still written inert in comments
    by `render_command`).
    """
    oversized = limits.too_large(text)
    if oversized is not None:
        raise ManifestError([oversized])
    unreadable = limits.unstorable(text)
    if unreadable is not None:
        raise ManifestError([FieldError("manifest", unreadable)])
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([FieldError("manifest", f"is not valid YAML{where}: {problem}")]) from None
    except ValueError as exc:  # a decimal integer of more digits than Python converts (sys.int_info)
        raise ManifestError([FieldError("manifest", f"holds a number that cannot be read: {exc}"[:200])]) from None
    if doc is None:
        raise ManifestError([FieldError("manifest", "is empty")])
    if not isinstance(doc, dict):
        raise ManifestError([FieldError("manifest", f"must be a mapping of fields, not {_kind(doc)}")])
    unstorable = limits.text_errors(doc) if limits.may_hold_unstorable(text) else []
    if unstorable:
        raise ManifestError(unstorable)
    manifest = _Parser(stored=stored).manifest(doc)
    return manifest


def _kind(value: object) -> str:
    """What a wrong value is, with the value itself when it is short: `a string ("two")`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int) and abs(value) >= 10**24:  # long: and repr of 4,300+ digits raises ValueError
        return "a number"
    if isinstance(value, int | float):
        text = repr(value)
        return f"a number ({text})" if len(text) <= 24 else "a number"
    if isinstance(value, str):
        return f"a string ({_quoted(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _quoted(text: str) -> str:
    """A string as JSON quotes it (every control character escaped), cut after 40 characters."""
    shown = json.dumps(text[:40])
    return shown if len(text) <= 40 else f'{shown[:-1]}..."'


def _at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _may_need_quoting(hp: Hyperparameter) -> bool:
    """Whether some value of `hp` is rendered in shell quotes (numbers and booleans never are)."""
    if isinstance(hp, Const):
        return needs_quoting(format_value(hp.value))
    if isinstance(hp, Categorical):
        return any(needs_quoting(format_value(v)) for v in hp.values)
    return False


def _longest_value(hp: Hyperparameter) -> int:
    """The longest a value of `hp` reads on a command line, shell-quoted (numbers: a float's repr at most)."""
    if isinstance(hp, Const):
        return limits.quoted_length(format_value(hp.value))
    if isinstance(hp, Categorical):
        return max((limits.quoted_length(format_value(v)) for v in hp.values), default=0)
    return 32


def _shown(value: Scalar) -> str:
    """A value as an error message quotes it: long strings are cut."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | bool | int) or (isinstance(value, float) and math.isfinite(value))


class _Parser:
    def __init__(self, *, stored: bool = False) -> None:
        self.stored = stored
        self.errors: list[FieldError] = []
        self._categorical_keys: dict[int, set[tuple[str, object]]] = {}

    def error(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    # -- shapes ------------------------------------------------------------

    def mapping(self, path: str, value: object, allowed: Collection[str]) -> dict[str, object]:
        """The fields of a mapping, recording unknown keys; {} (and an error) when not a mapping."""
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {_kind(value)}")
            return {}
        fields: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and key in allowed:
                fields[key] = item
            else:
                self.error(_at(path, key), f"unknown field (expected one of: {', '.join(allowed)})")
        return fields

    def string(self, path: str, value: object, default: str = "") -> str:
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {_kind(value)}")
            return default
        return value

    def integer(self, path: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, not {_kind(value)}")
            return None
        if abs(value) > limits.MAX_SAFE_INTEGER:
            self.error(path, f"must be between -2**53 and 2**53 ({limits.MAX_SAFE_INTEGER})")
            return None
        if minimum is not None and value < minimum:
            self.error(path, f"must be at least {minimum}")
            return None
        if maximum is not None and value > maximum:
            self.error(path, f"must be at most {maximum}")
            return None
        return value

    def field_int(
        self,
        fields: Mapping[str, object],
        key: str,
        path: str,
        default: int,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """An optional integer field: `default` when absent (or wrong: the error is recorded)."""
        if key not in fields:
            return default
        value = self.integer(path, fields[key], minimum, maximum)
        return default if value is None else value

    def number(self, path: str, value: object) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"must be a number, not {_kind(value)}")
            return None
        number = limits.safe_float(value)
        if number is None:
            self.error(path, "must be a finite number")
        return number

    def scalar(self, path: str, value: object) -> Scalar | None:
        if not _is_scalar(value):
            self.error(path, f"must be a string, number or boolean, not {_kind(value)}")
            return None
        if isinstance(value, str) and len(value) > limits.MAX_VALUE_CHARS:
            self.error(path, f"is {len(value)} characters long; at most {limits.MAX_VALUE_CHARS}")
            return None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limits.MAX_SAFE_INTEGER:
            self.error(path, f"must be between -2**53 and 2**53 ({limits.MAX_SAFE_INTEGER}); quote it for a string")
            return None
        return cast(Scalar, value)

    def choice(self, path: str, value: object, options: Collection[str]) -> str | None:
        if not isinstance(value, str) or value not in options:
            self.error(path, f"must be one of {', '.join(options)}")
            return None
        return value

    # -- the manifest --------------------------------------------------------

    def manifest(self, doc: dict[object, object]) -> Manifest:
        top = self.mapping("", doc, TOP_LEVEL_FIELDS)
        name = self.required(top, "name", self.name)
        command = self.required(top, "command", self.command)
        results = self.required(top, "results", self.uri)
        data = self.uri("data", top["data"]) if top.get("data") is not None else ""
        raw_hps = top.get("hyperparameters")
        hyperparameters = self.hyperparameters(raw_hps)
        # Names as written, valid or not, so that one bad hyperparameter is reported once.
        written = [str(n) for n in raw_hps] if isinstance(raw_hps, dict) else []
        if raw_hps is None or isinstance(raw_hps, dict):
            for unknown in unknown_placeholders(command, set(written)):
                self.error("command", f"unknown placeholder ${{{unknown}}}: not a hyperparameter")
        if not self.stored:
            self.command_quoting(command, hyperparameters, written)
        self.command_length(command, hyperparameters)
        manifest = Manifest(
            name=name,
            description=self.string("description", top["description"]) if "description" in top else "",
            command=command,
            results=results,
            data=data,
            framework=self.framework(top.get("framework")),
            resources=self.resources(top.get("resources")),
            hyperparameters=hyperparameters,
            search=self.search(top.get("search"), hyperparameters, written),
            metric_patterns=self.metrics(top.get("metrics")),
            max_restarts=self.field_int(top, "max_restarts", "max_restarts", 0, 0, MAX_RESTARTS),
            env=self.env(top.get("env")),
            priority=self.field_int(top, "priority", "priority", 0, -MAX_PRIORITY, MAX_PRIORITY),
            image=self.image(top["image"]) if top.get("image") is not None else "",
            network=cast(Network, self.choice("network", top["network"], NETWORKS) or "none")
            if "network" in top
            else "none",
            preemptible=self.boolean("preemptible", top["preemptible"]) if top.get("preemptible") is not None else True,
            preemption_grace_s=self.preemption_grace(top.get("preemption")),
            from_run=self.run_id("from_run", top["from_run"]) if top.get("from_run") is not None else "",
        )
        if self.errors:
            raise ManifestError(self.errors)
        return manifest

    def run_id(self, path: str, value: object) -> str:
        text = self.string(path, value)
        if isinstance(value, str) and not RUN_ID.fullmatch(text):
            self.error(path, "must be a run id (run-...)")
        return text

    def required(self, fields: Mapping[str, object], key: str, parse: _FieldParser) -> str:
        if fields.get(key) is None:
            self.error(key, "is required")
            return ""
        return parse(key, fields[key])

    def name(self, path: str, value: object) -> str:
        text = self.string(path, value)
        if isinstance(value, str) and not _NAME.fullmatch(text):
            self.error(path, "must be 1 to 100 characters of letters, digits, '.', '_' or '-'")
        return text

    def command(self, path: str, value: object) -> str:
        text = self.string(path, value)
        if isinstance(value, str) and not text.strip():
            self.error(path, "must not be empty")
        return text

    def command_length(self, command: str, hyperparameters: Mapping[str, Hyperparameter]) -> None:
        """Refuse a command whose runs could carry more than MAX_COMMAND_CHARS each (its longest values filled in)."""
        longest = {name: _longest_value(hp) for name, hp in hyperparameters.items()}
        length = limits.longest_command(command, longest)
        if length > limits.MAX_COMMAND_CHARS:
            self.error(
                "command",
                f"with its longest values filled in is {length} characters long; at most {limits.MAX_COMMAND_CHARS}",
            )

    def command_quoting(
        self, command: str, hyperparameters: Mapping[str, Hyperparameter], written: Collection[str]
    ) -> None:
        """Placeholders the shell would not read as one quoted word (see command_quoting).

        Only hyperparameters with a value that needs quoting count (a bad one,
        already reported, counts too: its values are unknown).
        """
        quoted = {n for n in written if n not in hyperparameters or _may_need_quoting(hyperparameters[n])}
        for problem in quoting_problems(command, quoted):
            self.error("command", str(problem))

    def uri(self, path: str, value: object) -> str:
        text = self.string(path, value)
        if not isinstance(value, str):
            return text
        if any(c.isspace() or ord(c) < 32 for c in text):
            self.error(path, "must not contain spaces or control characters")
        elif text.startswith("s3://"):
            bucket, _, key = text[len("s3://") :].partition("/")
            if not _BUCKET.fullmatch(bucket):
                self.error(path, "needs a bucket name: s3://bucket/prefix")
            elif ".." in key.split("/"):
                self.error(path, "must not contain '..' segments")
        elif text.startswith("file://"):
            where = text[len("file://") :]
            if not where.startswith("/"):
                self.error(path, "needs an absolute path: file:///absolute/path")
            elif ".." in where.split("/"):
                self.error(path, "must not contain '..' segments")
        else:
            self.error(path, "must be an s3://bucket/prefix or file:///absolute/path URI")
        return text

    def framework(self, value: object) -> Framework:
        if value is None:
            return Framework()
        if isinstance(value, str):
            return Framework(name=self.choice("framework", value, FRAMEWORKS) or "python")
        fields = self.mapping("framework", value, FRAMEWORK_FIELDS)
        if not isinstance(value, dict):
            return Framework()
        name = "python"
        if fields.get("name") is None:
            self.error("framework.name", f"is required (one of {', '.join(FRAMEWORKS)})")
        else:
            name = self.choice("framework.name", fields["name"], FRAMEWORKS) or name
        version = ""
        raw = fields.get("version")
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            self.error("framework.version", f'must be a string: quote it, as in "{raw}"')
        elif raw is not None:
            version = self.version(raw)
        return Framework(name=name, version=version)

    def version(self, value: object) -> str:
        """A framework version: agents are matched on it ("2.13" matches an agent's 2.13 and 2.13.x)."""
        text = self.string("framework.version", value)
        if not isinstance(value, str) or not text:
            return text
        if len(text) > limits.MAX_VERSION_CHARS or not _VERSION.fullmatch(text):
            self.error(
                "framework.version",
                f'must be a version such as "2.13" (1 to {limits.MAX_VERSION_CHARS} letters, digits, '
                "'.', '_', '+' or '-')",
            )
            return ""
        return text

    def image(self, value: object) -> str:
        """The user's own image: a reference the agent's engine resolves (it is never pulled from here)."""
        text = self.string("image", value)
        if not isinstance(value, str):
            return ""
        if not text.strip():
            self.error("image", "must not be empty (leave it out to run the framework's image)")
            return ""
        if len(text) > limits.MAX_IMAGE_CHARS:
            self.error("image", f"is {len(text)} characters long; at most {limits.MAX_IMAGE_CHARS}")
            return ""
        if not _IMAGE.fullmatch(text):
            self.error(
                "image",
                "must be an image reference such as registry.example.com/team/train:1.0 or "
                "localhost/train@sha256:<digest> (lowercase path, no spaces)",
            )
            return ""
        return text

    def resources(self, value: object) -> Resources:
        if value is None:
            return Resources()
        fields = self.mapping("resources", value, RESOURCES_FIELDS)
        return Resources(
            gpus=self.field_int(fields, "gpus", "resources.gpus", 0, 0, MAX_GPUS),
            cpus=self.field_int(fields, "cpus", "resources.cpus", 1, 1, MAX_CPUS),
            memory_bytes=self.memory("resources.memory", fields["memory"]) if "memory" in fields else 0,
            gpu_model=self.gpu_model(fields["gpu_model"]) if fields.get("gpu_model") is not None else "",
            labels=self.labels(fields.get("labels")),
        )

    def gpu_model(self, value: object) -> str:
        text = self.string("resources.gpu_model", value).strip()
        if isinstance(value, str) and not 0 < len(text) <= 64:
            self.error("resources.gpu_model", 'must be a GPU model such as "H100" (1 to 64 characters)')
        return text

    def labels(self, value: object) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error("resources.labels", f"must be a mapping of agent label to value, not {_kind(value)}")
            return {}
        labels: dict[str, str] = {}
        for key, item in value.items():
            path = _at("resources.labels", key)
            if not isinstance(key, str) or not _LABEL.fullmatch(key):
                self.error(path, "is not a label name (letters, digits, '.', '_', '/', '-')")
            elif isinstance(item, str | int) and not isinstance(item, bool):
                labels[key] = str(item)
            else:
                self.error(path, f"must be a string, not {_kind(item)}")
        return labels

    def memory(self, path: str, value: object) -> int:
        size: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                size = parse_size(value)
        if size is None or size < 1:
            self.error(path, "must be a size such as 4Gi, 512Mi or 1G, or a number of bytes")
            return 0
        if size > limits.MAX_SAFE_INTEGER:
            self.error(path, f"must be at most {limits.MAX_SAFE_INTEGER} bytes (8 PiB)")
            return 0
        return size

    # -- hyperparameters -------------------------------------------------------

    def hyperparameters(self, value: object) -> dict[str, Hyperparameter]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error("hyperparameters", f"must be a mapping of name to space, not {_kind(value)}")
            return {}
        if len(value) > limits.MAX_HYPERPARAMETERS:
            self.error("hyperparameters", f"has {len(value)} entries; at most {limits.MAX_HYPERPARAMETERS} are allowed")
            return {}
        parsed: dict[str, Hyperparameter] = {}
        for key, spec in value.items():
            path = _at("hyperparameters", key)
            if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key):
                self.error(path, "is not a valid name: use letters, digits and '_', not starting with a digit")
                continue
            hp = self.hyperparameter(path, spec)
            if hp is not None:
                parsed[key] = hp
        return parsed

    def hyperparameter(self, path: str, spec: object) -> Hyperparameter | None:
        if isinstance(spec, list):
            return self.categorical(path, {"values": spec}, values_path=path)
        if not isinstance(spec, dict):
            value = self.scalar(path, spec)
            return None if value is None else Const(value)
        kind = spec.get("type")
        if kind is None:
            self.error(_at(path, "type"), f"is required (one of {', '.join(HYPERPARAMETER_FIELDS)})")
            return None
        if self.choice(_at(path, "type"), kind, HYPERPARAMETER_FIELDS) is None:
            return None
        fields = self.mapping(path, spec, HYPERPARAMETER_FIELDS[str(kind)])
        errors_before = len(self.errors)
        hp: Hyperparameter | None
        if kind == "const":
            hp = self.const(path, fields)
        elif kind == "categorical":
            hp = self.categorical(path, fields, values_path=_at(path, "values"))
        elif kind == "int":
            hp = self.int_range(path, fields)
        else:
            hp = self.float_range(path, fields, log=kind == "log")
        return hp if len(self.errors) == errors_before else None

    def bound(self, path: str, fields: Mapping[str, object], key: str, parse: _NumberParser) -> float | None:
        if fields.get(key) is None:
            self.error(_at(path, key), "is required")
            return None
        return parse(_at(path, key), fields[key])

    def const(self, path: str, fields: Mapping[str, object]) -> Const | None:
        if fields.get("value") is None:
            self.error(_at(path, "value"), "is required")
            return None
        value = self.scalar(_at(path, "value"), fields["value"])
        return None if value is None else Const(value)

    def categorical(self, path: str, fields: Mapping[str, object], values_path: str) -> Categorical | None:
        raw = fields.get("values")
        if not isinstance(raw, list) or not raw:
            self.error(values_path, "must be a non-empty list of values")
            return None
        if len(raw) > limits.MAX_VALUES_PER_HYPERPARAMETER:
            self.error(
                values_path, f"has {len(raw)} values; at most {limits.MAX_VALUES_PER_HYPERPARAMETER} are allowed"
            )
            return None
        values: list[Scalar] = []
        # Keyed by value_key, so spotting a repeat is one lookup (a list scan made 20,000 values take minutes).
        seen: set[tuple[str, object]] = set()
        for i, item in enumerate(raw):
            value = self.scalar(f"{values_path}[{i}]", item)
            if value is None:
                continue
            key = value_key(value)
            if key in seen:
                self.error(f"{values_path}[{i}]", f"repeats the value {_shown(value)}")
                continue
            seen.add(key)
            values.append(value)
        return Categorical(tuple(values))

    def categorical_error(self, hp: Categorical, value: Scalar) -> str | None:
        """`value_error` for a categorical by one set lookup: a list of runs checks each of its values."""
        keys = self._categorical_keys.get(id(hp))
        if keys is None:
            keys = self._categorical_keys[id(hp)] = {value_key(v) for v in hp.values}
        if value_key(value) in keys:
            return None
        shown = ", ".join(_shown(v) for v in hp.values[:20])
        more = f", ... ({len(hp.values)} values)" if len(hp.values) > 20 else ""
        return f"must be one of [{shown}{more}]"

    def int_range(self, path: str, fields: Mapping[str, object]) -> IntRange | None:
        low = self.bound(path, fields, "min", lambda p, v: self.integer(p, v))
        high = self.bound(path, fields, "max", lambda p, v: self.integer(p, v))
        step = self.field_int(fields, "step", _at(path, "step"), 1, 1)
        if low is None or high is None:
            return None
        if high < low:
            self.error(_at(path, "max"), f"must be at least min ({int(low)})")
        return IntRange(int(low), int(high), step)

    def float_range(self, path: str, fields: Mapping[str, object], log: bool) -> DoubleRange | LogRange | None:
        low = self.bound(path, fields, "min", self.number)
        high = self.bound(path, fields, "max", self.number)
        count = self.integer(_at(path, "count"), fields["count"], 1) if "count" in fields else None
        base = 10.0
        if log and "base" in fields:
            written = self.number(_at(path, "base"), fields["base"])
            # `is None`, not `or`: a base of 0 is an error to report, not an absent base.
            if written is not None and (written <= 0 or written == 1):
                self.error(_at(path, "base"), "must be greater than 0 and not 1")
            elif written is not None:
                base = written
        if low is None or high is None:
            return None
        if log and low <= 0:
            self.error(_at(path, "min"), "must be greater than 0 on a log scale")
        if high < low:
            self.error(_at(path, "max"), f"must be at least min ({low})")
        elif not log and not math.isfinite(high - low) and not self.stored:
            # Samplers draw min + u * (max - min): a width beyond a double's range overflows there.
            self.error(_at(path, "max"), f"must be within {sys.float_info.max:.6g} of min ({low})")
        return LogRange(low, high, base, count) if log else DoubleRange(low, high, count)

    # -- search --------------------------------------------------------------

    def search(self, value: object, hps: Mapping[str, Hyperparameter], written: Collection[str]) -> Search:
        fields = self.mapping("search", value, SEARCH_FIELDS) if value is not None else {}
        varying = [n for n, hp in hps.items() if not isinstance(hp, Const)]
        method: str | None = "single"
        if "method" in fields:
            method = self.choice("search.method", fields["method"], SEARCH_METHODS)
        elif varying and (value is None or isinstance(value, dict)):
            self.error("search.method", "is required when hyperparameters vary (grid, list, random or tpe)")
        max_runs = (
            self.integer("search.max_runs", fields["max_runs"], 1, MAX_RUNS_PER_EXPERIMENT)
            if "max_runs" in fields
            else None
        )
        max_parallel = (
            self.integer("search.max_parallel", fields["max_parallel"], 1) if "max_parallel" in fields else None
        )
        runs: tuple[dict[str, Scalar], ...] = ()
        if "runs" in fields and method != "list":
            self.error("search.runs", "is only for method list")
        if method == "single" and "method" in fields and varying:
            self.error("search.method", f"single needs every hyperparameter const; {', '.join(varying)} vary")
        elif method == "grid":
            self.grid(hps, max_runs)
        elif method == "list":
            runs = self.runs(fields.get("runs"), hps, written, max_runs)
        elif method in ("random", "tpe") and "max_runs" not in fields:
            self.error("search.max_runs", f"is required for {method} search: how many runs to sample")
        metric, goal, early_stopping = self.objective(fields)
        if method == "tpe":
            if "metric" not in fields:
                self.error("search.metric", "is required for tpe search: the value it optimizes")
            if early_stopping == "asha":
                self.error("search.early_stopping", "asha works with grid, list and random search, not tpe")
        asha = AshaSettings()
        if "asha" in fields:
            asha = self.asha(fields["asha"])
            if early_stopping != "asha":
                self.error("search.asha", "is only for early_stopping: asha")
        if early_stopping == "asha" and method in ("single",):
            self.error("search.early_stopping", "asha needs several runs (method grid, list or random)")
        max_time = self.duration("search.max_time", fields["max_time"]) if "max_time" in fields else None
        max_gpu_hours = None
        if "max_gpu_hours" in fields:
            max_gpu_hours = self.number("search.max_gpu_hours", fields["max_gpu_hours"])
            if max_gpu_hours is not None and max_gpu_hours <= 0:
                self.error("search.max_gpu_hours", "must be greater than 0")
                max_gpu_hours = None
            elif max_gpu_hours is not None and max_gpu_hours > limits.MAX_GPU_HOURS:
                self.error("search.max_gpu_hours", f"must be at most {limits.MAX_GPU_HOURS:g}")
                max_gpu_hours = None
        return Search(
            method=cast(SearchMethod, method or "single"),
            max_runs=max_runs,
            max_parallel=max_parallel,
            runs=runs,
            seed=self.field_int(fields, "seed", "search.seed", 0),
            metric=metric,
            goal=goal,
            early_stopping=early_stopping,
            asha=asha,
            max_time_s=max_time,
            max_gpu_hours=max_gpu_hours,
        )

    def asha(self, value: object) -> AshaSettings:
        fields = self.mapping("search.asha", value, ASHA_FIELDS)
        min_resource = self.field_int(fields, "min_resource", "search.asha.min_resource", 1, 1)
        factor = self.field_int(fields, "reduction_factor", "search.asha.reduction_factor", 3, 2)
        max_resource: int | None = None
        if "max_resource" in fields:
            max_resource = self.integer("search.asha.max_resource", fields["max_resource"], 1)
            if max_resource is not None and max_resource <= min_resource:
                self.error("search.asha.max_resource", f"must be greater than min_resource ({min_resource})")
                max_resource = None
        unit = "epochs"
        if "time_unit" in fields:
            unit = self.choice("search.asha.time_unit", fields["time_unit"], TIME_UNITS) or "epochs"
        mode = "stop"
        if "mode" in fields:
            mode = self.choice("search.asha.mode", fields["mode"], ASHA_MODES) or "stop"
            if mode == "pause" and "max_resource" not in fields:
                self.error("search.asha.mode", "pause needs max_resource (what a promoted run trains to at last)")
        return AshaSettings(min_resource, factor, max_resource, unit, mode)

    def boolean(self, path: str, value: object, default: bool = True) -> bool:
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, not {_kind(value)}")
            return default
        return value

    def preemption_grace(self, value: object) -> int | None:
        """`preemption: {grace: 60s}`: whole seconds (rounded up), at most an hour; None when not given."""
        if value is None:
            return None
        fields = self.mapping("preemption", value, PREEMPTION_FIELDS)
        if fields.get("grace") is None:
            return None
        seconds = self.duration("preemption.grace", fields["grace"])
        if seconds is None:
            return None
        if seconds > MAX_PREEMPTION_GRACE_S:
            self.error("preemption.grace", f"must be at most 1h ({MAX_PREEMPTION_GRACE_S} seconds)")
            return None
        return math.ceil(seconds)

    def duration(self, path: str, value: object) -> float | None:
        """Seconds from 3600, "90s", "30m", "2h" or "1d"."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = limits.safe_float(value) or math.inf
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            self.error(path, "must be a duration such as 90s, 30m, 2h or 1d (or a number of seconds)")
            return None
        if not math.isfinite(seconds) or seconds <= 0:
            self.error(path, "must be greater than 0")
            return None
        if seconds > limits.MAX_DURATION_S:
            self.error(path, "must be at most ten years")
            return None
        return seconds

    def grid(self, hps: Mapping[str, Hyperparameter], max_runs: int | None) -> None:
        for name, hp in hps.items():
            if grid_count(hp) is None:
                self.error(f"hyperparameters.{name}.count", "is required for grid search: how many points")
        size = grid_size(hps)
        if size is None:
            return
        if max_runs is not None and size > max_runs:
            self.error("search.max_runs", f"the grid has {size} runs, more than max_runs ({max_runs})")
        elif size > MAX_RUNS_PER_EXPERIMENT:
            self.error("search.max_runs", f"the grid has {size} runs, more than {MAX_RUNS_PER_EXPERIMENT} allowed")

    def runs(
        self, value: object, hps: Mapping[str, Hyperparameter], written: Collection[str], max_runs: int | None
    ) -> tuple[dict[str, Scalar], ...]:
        if not isinstance(value, list) or not value:
            self.error("search.runs", "must be a non-empty list of hyperparameter assignments for method list")
            return ()
        limit = min(max_runs or MAX_RUNS_PER_EXPERIMENT, MAX_RUNS_PER_EXPERIMENT)
        if len(value) > limit:
            self.error("search.max_runs", f"the list has {len(value)} runs, more than {limit} allowed")
        return tuple(self.run(f"search.runs[{i}]", item, hps, written) for i, item in enumerate(value))

    def run(
        self, path: str, item: object, hps: Mapping[str, Hyperparameter], written: Collection[str]
    ) -> dict[str, Scalar]:
        fields = self.mapping(path, item, list(written))
        assignment: dict[str, Scalar] = {}
        for name, hp in hps.items():
            if name not in fields:
                if isinstance(hp, Const):
                    assignment[name] = hp.value
                elif isinstance(item, dict):
                    self.error(_at(path, name), "is required: every run gives each hyperparameter that varies")
                continue
            value = self.scalar(_at(path, name), fields[name])
            if value is None:
                continue
            problem = self.categorical_error(hp, value) if isinstance(hp, Categorical) else value_error(hp, value)
            if problem is not None:
                self.error(_at(path, name), problem)
                continue
            is_float = isinstance(hp, DoubleRange | LogRange) and not isinstance(value, bool)
            assignment[name] = float(value) if is_float else value
        return assignment

    def objective(self, fields: Mapping[str, object]) -> tuple[str | None, Goal | None, str]:
        metric: str | None = None
        if "metric" in fields:
            metric = self.string("search.metric", fields["metric"]) or None
            if metric is None and isinstance(fields["metric"], str):
                self.error("search.metric", "must not be empty")
        goal = cast(Goal | None, self.choice("search.goal", fields["goal"], GOALS) if "goal" in fields else None)
        early = "none"
        if "early_stopping" in fields:
            early = self.choice("search.early_stopping", fields["early_stopping"], EARLY_STOPPING) or "none"
        if metric is not None and "goal" not in fields:
            self.error("search.goal", "is required when search.metric is set (maximize or minimize)")
        if "metric" not in fields and ("goal" in fields or early != "none"):
            self.error("search.metric", "is required with search.goal or search.early_stopping")
        return metric, goal, early

    # -- metrics and environment ----------------------------------------------

    def metrics(self, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        fields = self.mapping("metrics", value, METRICS_FIELDS)
        raw = fields.get("patterns")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.error("metrics.patterns", f"must be a list of regular expressions, not {_kind(raw)}")
            return ()
        patterns: list[str] = []
        for i, item in enumerate(raw):
            path = f"metrics.patterns[{i}]"
            if not isinstance(item, str):
                self.error(path, f"must be a regular expression string, not {_kind(item)}")
                continue
            try:
                compiled = re.compile(item)
            except re.error as exc:
                self.error(path, f"is not a valid regular expression: {exc}")
                continue
            if not set(compiled.groupindex) - {"step"}:
                self.error(path, "needs a named group for the metric value, as in (?P<loss>[0-9.eE+-]+)")
                continue
            patterns.append(item)
        return tuple(patterns)

    def env(self, value: object) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error("env", f"must be a mapping of variable name to value, not {_kind(value)}")
            return {}
        env: dict[str, str] = {}
        for key, item in value.items():
            path = _at("env", key)
            if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key):
                self.error(path, "is not a valid environment variable name")
            elif key in RESERVED_ENV or key.startswith("RUNYARD_"):
                self.error(path, "is set by Runyard for every run")
            elif (scalar := self.scalar(path, item)) is not None:
                env[key] = format_value(scalar)
        return env
