"""Framework images on a real engine (Podman through its Docker-compatible API): built, labelled, listed, used."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from runyard.agent import images
from runyard.agent.engine import DOCKER_SOCKET, PODMAN_SOCKET, connect
from runyard.client.cli import main

pytestmark = pytest.mark.integration

TEST_LABEL = "org.runyard.test"


@pytest.fixture
def engine(container_engine: str) -> Iterator[docker.DockerClient]:
    client = connect(container_engine)
    try:
        yield client
    finally:
        client.close()


def run_in(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    environment: dict[str, str] | None = None,
    network_disabled: bool = False,
) -> str:
    """The output of a command in a fresh container of image, which is removed after (by its own label)."""
    mark = uuid.uuid4().hex
    try:
        out = client.containers.run(
            image,
            command,
            labels={TEST_LABEL: mark},
            stderr=True,
            environment=environment,
            network_disabled=network_disabled,
        )
    finally:
        for container in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={mark}"}):
            container.remove(force=True)
    assert isinstance(out, bytes)
    return out.decode()


def test_the_python_image_is_built_labelled_and_listed(engine: docker.DockerClient, python_image: str) -> None:
    assert python_image == "localhost/runyard/python:3.11"
    image = engine.images.get(python_image)
    labels = image.labels
    assert labels[images.LABEL_FRAMEWORK] == "python"
    assert labels[images.LABEL_VERSION] == "3.11"
    assert labels[images.LABEL_BUILD_KEY].startswith("sha256:")
    assert image.attrs["Config"]["User"] == images.IMAGE_USER
    listed = {(i.name, i.version): i for i in images.framework_images(engine)}
    assert listed[("python", "3.11")].image_id == image.id
    assert listed[("python", "3.11")].digest.startswith("sha256:")


def test_the_runyard_helper_works_inside_as_an_unprivileged_user(
    engine: docker.DockerClient, python_image: str
) -> None:
    script = (
        "import os, runyard, runyard as r; from runyard import log; "
        "log(step=3, val_accuracy=0.5); "
        "print(os.getuid(), os.getgid(), runyard.__version__); "
        "print(open(os.environ['RUNYARD_METRICS_FILE']).read(), end='')"
    )
    out = run_in(
        engine, python_image, ["python", "-c", script], environment={"RUNYARD_METRICS_FILE": "/tmp/metrics.jsonl"}
    )
    ids, record = out.splitlines()
    assert ids.split()[:2] == ["65534", "65534"]
    assert json.loads(record)["val_accuracy"] == 0.5 and json.loads(record)["step"] == 3


def test_the_image_is_small_and_keeps_no_package_lists(engine: docker.DockerClient, python_image: str) -> None:
    assert engine.images.get(python_image).attrs["Size"] < 250_000_000
    out = run_in(engine, python_image, ["sh", "-c", "ls -A /var/lib/apt/lists /usr/share/man 2>&1; true"])
    assert "Packages" not in out and "man1" not in out, out


def test_a_second_build_is_skipped_by_its_key(engine: docker.DockerClient, python_image: str) -> None:
    before = engine.images.get(python_image).id
    result = images.build_image(engine, "python", "3.11")
    assert result.skipped
    assert result.image_id == before == engine.images.get(python_image).id


def test_an_unknown_framework_is_refused_naming_it(engine: docker.DockerClient) -> None:
    with pytest.raises(images.ImageError, match="'jax'"):
        images.build_image(engine, "jax", "0.4")
    assert ("jax", "0.4") not in {(i.name, i.version) for i in images.framework_images(engine)}


def test_images_list_shows_the_built_image(
    container_engine: str, python_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["images", "list", "--engine-url", container_engine, "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    python = next(i for i in listed if (i["name"], i["version"]) == ("python", "3.11"))
    assert python["image"] == python_image and python["digest"].startswith("sha256:")
    assert main(["images", "list", "--engine-url", container_engine]) == 0
    assert "localhost/runyard/python:3.11" in capsys.readouterr().out


def test_the_pytorch_image_runs_torch_and_sklearn(engine: docker.DockerClient, pytorch_image: str) -> None:
    script = "import torch, sklearn, numpy, runyard; print(torch.__version__.split('+')[0], sklearn.__name__)"
    out = run_in(engine, pytorch_image, ["python", "-c", script], network_disabled=True)
    assert out.split() == ["2.13.0", "sklearn"]


def test_only_images_under_their_own_name_are_advertised(engine: docker.DockerClient, tmp_path: Path) -> None:
    """A user's image carrying our labels (built FROM ours, say) is not offered as a framework version."""
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        info = tarfile.TarInfo("hello")
        tar.addfile(info, io.BytesIO(b""))
    name = f"localhost/runyard-test-{uuid.uuid4().hex[:8]}/impostor:1"
    changes = [f"LABEL {images.LABEL_FRAMEWORK}=python", f"LABEL {images.LABEL_VERSION}=9.9"]
    image_id = images.import_tarball(engine, tarball, name, changes)
    try:
        assert engine.images.get(name).labels[images.LABEL_VERSION] == "9.9"
        assert ("python", "9.9") not in {(i.name, i.version) for i in images.framework_images(engine)}
    finally:
        engine.images.remove(image_id, force=True)


def test_images_list_starts_a_podman_service_when_no_engine_runs(
    python_image: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if any(Path(p).exists() for p in (PODMAN_SOCKET, DOCKER_SOCKET)):
        pytest.skip("an engine socket exists on this host: the fallback is not taken")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert main(["images", "list", "-o", "json"]) == 0
    out = capsys.readouterr()
    assert "starting a podman service" in out.err
    assert python_image in [i["image"] for i in json.loads(out.out)]


def test_an_engine_that_is_gone_is_a_clear_error(tmp_path: Path) -> None:
    gone = docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41")
    with pytest.raises(images.ImageError, match=r"lost the engine while building localhost/runyard/python:3\.11"):
        images.build_image(gone, "python", "3.11")
