"""The manifest's `image:` and `network:`, and the framework version that placement matches: parsed once, carried
into every RunSpec, and every mistake named by its field."""

from __future__ import annotations

import pytest

from runyard.server.domain import manifest_limits as limits
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.experiment import run_spec
from runyard.server.domain.manifest import parse_manifest
from runyard.v1 import common_pb2

BASE = "name: x\ncommand: 'true'\nresults: s3://r/x\n"


@pytest.mark.parametrize(
    "image",
    [
        "localhost/test:1",
        "train",
        "registry.example.com:5000/team/train:2.13-cu124",
        "ghcr.io/org/my_repo/train__x:latest",
        "localhost/train@sha256:" + "a" * 64,
        "docker.io/library/python:3.11-slim@sha256:" + "0" * 64,
    ],
)
def test_an_image_reaches_every_run_spec(image: str) -> None:
    manifest = parse_manifest(f"{BASE}image: {image!r}\n")
    assert manifest.image == image
    assert run_spec(manifest, {}, "", "run-1").image == image


def test_image_and_framework_may_both_be_set_and_the_framework_only_names_what_it_is() -> None:
    manifest = parse_manifest(f'{BASE}image: localhost/train:1\nframework: {{name: pytorch, version: "2.13"}}\n')
    spec = run_spec(manifest, {}, "", "run-1")
    assert (spec.image, spec.framework.name, spec.framework.version) == ("localhost/train:1", "pytorch", "2.13")


def test_without_them_the_framework_image_and_no_network() -> None:
    manifest = parse_manifest(BASE)
    assert (manifest.image, manifest.network) == ("", "none")
    spec = run_spec(manifest, {}, "", "run-1")
    assert (spec.image, spec.network) == ("", common_pb2.RUN_NETWORK_NONE)


@pytest.mark.parametrize(
    ("line", "network"),
    [("network: none", common_pb2.RUN_NETWORK_NONE), ("network: egress", common_pb2.RUN_NETWORK_EGRESS)],
)
def test_network_reaches_every_run_spec(line: str, network: int) -> None:
    assert run_spec(parse_manifest(f"{BASE}{line}\n"), {}, "", "run-1").network == network


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        ("image: 3", "image", "must be a string"),
        ("image: [a, b]", "image", "must be a string"),
        ("image: ''", "image", "must not be empty"),
        ("image: '  '", "image", "must not be empty"),
        ("image: 'Team/Train:1'", "image", "image reference"),
        ("image: 'train:1 --privileged'", "image", "image reference"),
        ("image: 'localhost/train:'", "image", "image reference"),
        ("image: 'localhost/train@sha256:xyz'", "image", "image reference"),
        ("image: '-v /:/host'", "image", "image reference"),
        (f"image: '{'a' * (limits.MAX_IMAGE_CHARS + 1)}'", "image", f"at most {limits.MAX_IMAGE_CHARS}"),
        ("network: host", "network", "none, egress"),
        ("network: true", "network", "none, egress"),
        ("framework: {name: pytorch, version: 2.13}", "framework.version", "quote it"),
        ("framework: {name: pytorch, version: '2.13 beta'}", "framework.version", "version such as"),
        ("framework: {name: pytorch, version: '.2'}", "framework.version", "version such as"),
        (f"framework: {{name: pytorch, version: '{'1' * 65}'}}", "framework.version", "version such as"),
    ],
)
def test_bad_values_are_named_by_their_field(line: str, field: str, words: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(f"{BASE}{line}\n")
    assert field in err.value.fields
    assert words in str(err.value), str(err.value)


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(f"{BASE}image: 'Bad Image'\nnetwork: bridge\nframework: {{name: pytorch, version: 'a b'}}\n")
    assert {"image", "network", "framework.version"} <= set(err.value.fields)
