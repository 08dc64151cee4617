"""Manifest `preemptible` and `preemption.grace`: what the RunSpec carries, and what is refused."""

from __future__ import annotations

import pytest

from runyard.server.domain.errors import ManifestError
from runyard.server.domain.experiment import run_spec
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.manifest_schema import manifest_schema

BASE = "name: p\ncommand: python train.py\nresults: s3://results/p\n"


def spec(extra: str):  # type: ignore[no-untyped-def]
    return run_spec(parse_manifest(BASE + extra), {}, "", "r-1")


def test_runs_are_preemptible_with_the_default_grace_unless_the_manifest_says_otherwise() -> None:
    default = spec("")
    assert not default.not_preemptible and default.preemption_grace_seconds == 0
    assert spec("preemptible: false\n").not_preemptible
    assert not spec("preemptible: true\n").not_preemptible
    assert spec("preemption: {grace: 2m}\n").preemption_grace_seconds == 120
    assert spec("preemption: {grace: 1.5}\n").preemption_grace_seconds == 2  # whole seconds, rounded up
    assert spec("preemption: {}\n").preemption_grace_seconds == 0


@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        ("preemptible: no-thanks\n", "preemptible", "must be true or false"),
        ("preemption: {grace: 2h}\n", "preemption.grace", "at most 1h"),
        ("preemption: {grace: soon}\n", "preemption.grace", "must be a duration"),
        ("preemption: {grace: 60s, hard: true}\n", "preemption.hard", "unknown field"),
        ("preemption: 60s\n", "preemption", "must be a mapping"),
    ],
)
def test_bad_preemption_fields_are_named(extra: str, path: str, words: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(BASE + extra)
    assert any(e.field == path and words in e.message for e in caught.value.errors), caught.value.errors


def test_the_schema_knows_the_fields() -> None:
    props = manifest_schema()["properties"]
    assert "preemptible" in props and "grace" in props["preemption"]["properties"]
