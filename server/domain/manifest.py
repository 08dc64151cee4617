"""The experiment manifest: its model, its parser, and how it expands into runs.

One import for everything a caller needs; the parts live in their own modules
(`manifest_model`, `manifest_parse`, `search_space`, `command_template`).
"""

from __future__ import annotations

from runyard.server.domain.command_template import render_command
from runyard.server.domain.manifest_model import (
    MAX_RUNS_PER_EXPERIMENT,
    Categorical,
    Const,
    DoubleRange,
    Framework,
    Hyperparameter,
    IntRange,
    LogRange,
    Manifest,
    Resources,
    Scalar,
    Search,
)
from runyard.server.domain.manifest_parse import load_yaml, parse_manifest
from runyard.server.domain.search_space import Trial, expand_trials

__all__ = [
    "MAX_RUNS_PER_EXPERIMENT",
    "Categorical",
    "Const",
    "DoubleRange",
    "Framework",
    "Hyperparameter",
    "IntRange",
    "LogRange",
    "Manifest",
    "Resources",
    "Scalar",
    "Search",
    "Trial",
    "expand_trials",
    "load_yaml",
    "parse_manifest",
    "render_command",
]
