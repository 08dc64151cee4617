"""The pure parts of the image builder: recipes, the build key, the import's changes, the digest read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runyard.agent import images
from runyard.client.cli import main

PYTORCH = images.recipe_for("pytorch", "2.13")
WHEELS = {"torch-2.13.0-cp311.whl": "aa", "numpy-2.4.6-cp311.whl": "bb"}
HELPER = {"__init__.py": b"def log(): ...\n", "py.typed": b""}


def test_the_recipes_the_issue_names() -> None:
    assert images.recipe_for("python", "3.11").requirements == ()
    assert "torch==2.13.0" in PYTORCH.requirements
    assert "tensorflow-cpu==2.21.0" in images.recipe_for("tensorflow", "2.21").requirements
    assert PYTORCH.reference == "localhost/runyard/pytorch:2.13"
    # Manifests run `python ...`: every image has it, not only python3.
    assert all("python-is-python3" in r.packages for r in images.RECIPES.values())


@pytest.mark.parametrize(("framework", "version"), [("jax", "0.4"), ("pytorch", "1.0"), ("PyTorch", "2.13")])
def test_an_unknown_framework_version_is_refused_by_name(framework: str, version: str) -> None:
    with pytest.raises(images.ImageError) as e:
        images.recipe_for(framework, version)
    assert repr(framework) in str(e.value) and repr(version) in str(e.value)
    assert "pytorch 2.13" in str(e.value)  # and says what can be built


def test_the_build_key_is_stable_and_order_free() -> None:
    key = images.build_key(PYTORCH, WHEELS, HELPER)
    assert key.startswith("sha256:")
    assert images.build_key(PYTORCH, dict(reversed(list(WHEELS.items()))), HELPER) == key


@pytest.mark.parametrize(
    "changed",
    [
        lambda: images.build_key(PYTORCH, {**WHEELS, "torch-2.13.0-cp311.whl": "cc"}, HELPER),
        lambda: images.build_key(PYTORCH, {**WHEELS, "extra-1.0.whl": "dd"}, HELPER),
        lambda: images.build_key(PYTORCH, WHEELS, {**HELPER, "__init__.py": b"def log(): pass\n"}),
        lambda: images.build_key(images.recipe_for("tensorflow", "2.21"), WHEELS, HELPER),
        lambda: images.build_key(images.Recipe("pytorch", "2.13", PYTORCH.requirements, ("python3",)), WHEELS, HELPER),
    ],
    ids=["wheel-hash", "wheel-added", "helper", "recipe", "packages"],
)
def test_any_changed_input_changes_the_key(changed: object) -> None:
    assert callable(changed)
    assert changed() != images.build_key(PYTORCH, WHEELS, HELPER)


def test_the_helper_is_the_light_root_package_only(tmp_path: Path) -> None:
    files = images.helper_files()
    assert set(files) == {"__init__.py", "py.typed"}
    (tmp_path / "runyard").mkdir()
    for name, data in files.items():
        (tmp_path / "runyard" / name).write_bytes(data)
    # As in the image: the standard library and these files only (-S: no site-packages), and it logs.
    code = "import runyard; runyard.log(step=1, acc=0.5); print(runyard.__version__)"
    env = {"RUNYARD_METRICS_FILE": str(tmp_path / "m.jsonl"), "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-S", "-c", code], env=env, check=True, capture_output=True)
    assert '"acc": 0.5' in (tmp_path / "m.jsonl").read_text()


def test_the_image_configuration_is_an_input_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = images.build_key(PYTORCH, WHEELS, HELPER)
    monkeypatch.setattr(images, "IMAGE_USER", "1000:1000")
    assert images.build_key(PYTORCH, WHEELS, HELPER) != key


def test_the_image_carries_its_labels_and_an_unprivileged_user() -> None:
    changes = images.image_changes(PYTORCH, "sha256:k")
    assert "LABEL org.runyard.framework=pytorch" in changes
    assert "LABEL org.runyard.framework.version=2.13" in changes
    assert "LABEL org.runyard.build.key=sha256:k" in changes
    assert "USER 65534:65534" in changes


def test_pip_runs_from_its_wheel_only_when_there_are_wheels(tmp_path: Path) -> None:
    helper = tmp_path / "runyard"
    plain = images.mmdebstrap_command(images.recipe_for("python", "3.11"), None, helper, tmp_path / "r.tar")
    assert not any("--no-index" in arg for arg in plain)
    assert plain[-2:] == ["bookworm", str(tmp_path / "r.tar")]
    assert any("path-exclude=/usr/share/doc/*" in arg for arg in plain)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    with pytest.raises(images.ImageError, match="no pip wheel"):
        images.mmdebstrap_command(PYTORCH, wheelhouse, helper, tmp_path / "r.tar")
    (wheelhouse / "pip-26.3-py3-none-any.whl").write_bytes(b"")
    cmd = " ".join(images.mmdebstrap_command(PYTORCH, wheelhouse, helper, tmp_path / "r.tar"))
    assert "/tmp/wheelhouse/pip-26.3-py3-none-any.whl/pip install" in cmd
    assert "--no-index" in cmd and "torch==2.13.0" in cmd
    assert 'rm -rf "$1/tmp/wheelhouse"' in cmd  # the wheels do not stay in the image


def test_the_digest_is_the_manifest_digest_else_the_id() -> None:
    attrs: dict[str, object] = {"Id": "sha256:id", "RepoDigests": ["localhost/runyard/python@sha256:m"]}
    assert images.image_digest(attrs) == "sha256:m"
    assert images.image_digest({"Id": "sha256:id", "RepoDigests": []}) == "sha256:id"
    assert images.image_digest({"Id": "sha256:id"}) == "sha256:id"


def test_the_cli_refuses_an_unknown_framework_before_any_engine(capsys: pytest.CaptureFixture[str]) -> None:
    # No engine URL answers here: the recipe check comes first, so the message is about the framework.
    assert main(["images", "build", "jax", "0.4", "--engine-url", "unix:///nonexistent.sock"]) == 1
    err = capsys.readouterr().err
    assert "'jax'" in err and "'0.4'" in err


def test_the_command_line_does_not_load_the_engine_client_until_asked() -> None:
    code = (
        "import sys, runyard.client.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('docker', 'runyard.agent'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
