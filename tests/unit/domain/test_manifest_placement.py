"""What a manifest asks of placement: GPU model, agent labels, priority; and their errors."""

from __future__ import annotations

import pytest

from runyard.server.domain.errors import ManifestError
from runyard.server.domain.experiment import run_spec
from runyard.server.domain.manifest import parse_manifest

MANIFEST = """
name: big-model
command: python train.py
results: s3://results/big
priority: 5
resources:
  gpus: 2
  gpu_model: H100
  labels: {pool: research, zone: 1}
"""


def test_gpu_model_labels_and_priority_reach_every_run_spec() -> None:
    manifest = parse_manifest(MANIFEST)
    assert manifest.priority == 5
    assert manifest.resources.gpu_model == "H100"
    assert dict(manifest.resources.labels) == {"pool": "research", "zone": "1"}
    spec = run_spec(manifest, {}, "", "run-1")
    assert (spec.resources.gpus, spec.resources.gpu_model, spec.priority) == (2, "H100", 5)
    assert dict(spec.resources.agent_labels) == {"pool": "research", "zone": "1"}


def test_without_them_any_model_any_agent_and_priority_zero() -> None:
    manifest = parse_manifest("name: x\ncommand: 'true'\nresults: s3://r/x\n")
    spec = run_spec(manifest, {}, "", "run-1")
    assert (spec.resources.gpu_model, dict(spec.resources.agent_labels), spec.priority) == ("", {}, 0)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("priority: high", "priority"),
        ("priority: 5000", "priority"),
        ("resources: {gpu_model: 100}", "resources.gpu_model"),
        ("resources: {gpu_model: ''}", "resources.gpu_model"),
        ("resources: {labels: [a, b]}", "resources.labels"),
        ("resources: {labels: {pool: [a]}}", "resources.labels.pool"),
        ("resources: {labels: {'bad key': x}}", "resources.labels.bad key"),
    ],
)
def test_bad_placement_fields_are_named(line: str, field: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(f"name: x\ncommand: 'true'\nresults: s3://r/x\n{line}\n")
    assert field in err.value.fields
