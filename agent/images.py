"""Framework images built on this host, because no container registry can be reached from it.

An image is Debian's minimal root file system (``mmdebstrap --variant=minbase``)
with Debian's python3, the framework's wheels installed offline inside it, and
Runyard's light ``runyard`` package (the ``runyard.log`` helper) so user code
can report metrics. The tarball is imported into the engine through the Docker
Engine API, so the same code fills Podman's or Docker Engine's storage.

A build is slow (a minute or more with a framework wheel), so each image carries
a build key: a hash over everything that went into it (Debian suite, packages,
the wheels' own hashes, the helper's files, this recipe's format). A build whose
key matches the image already there is skipped; ``force`` rebuilds anyway.
Only the light root package goes in, not the whole project: the server and agent
have no business inside a run's image, and a change to them must not force the
framework images (and every CI machine's cache of them) to be rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests

import runyard

LABEL_FRAMEWORK = "org.runyard.framework"
LABEL_VERSION = "org.runyard.framework.version"
LABEL_BUILD_KEY = "org.runyard.build.key"
REPOSITORY_PREFIX = "localhost/runyard/"

DEBIAN_SUITE = "bookworm"
#: Debian's python3 in the suite above; the wheels are fetched for it.
IMAGE_PYTHON = "3.11"
#: What a run's container sees on PATH (its environment is an allowlist, but the image says it too).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The unprivileged user an image runs as unless the runtime says otherwise (nobody:nogroup).
IMAGE_USER = "65534:65534"
#: Bumped when the way an image is put together changes, so every old image is rebuilt.
RECIPE_FORMAT = "1"

#: Debian packages every image gets: `python` is what manifests call, hence python-is-python3.
BASE_PACKAGES = ("python3", "python-is-python3", "ca-certificates")
#: Left out of every image: nobody reads manuals inside a training container.
_EXCLUDED_PATHS = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*")
_HELPER_FILES = ("__init__.py", "py.typed")
_SITE_PACKAGES = f"/usr/local/lib/python{IMAGE_PYTHON}/dist-packages"


class ImageError(RuntimeError):
    """A build could not be done; the message names what (an unknown framework, a failed step)."""


@dataclass(frozen=True)
class Recipe:
    """What one framework image holds beyond the base: pip requirements installed from wheels."""

    framework: str
    version: str
    requirements: tuple[str, ...] = ()
    packages: tuple[str, ...] = BASE_PACKAGES

    @property
    def reference(self) -> str:
        return image_reference(self.framework, self.version)


RECIPES: dict[tuple[str, str], Recipe] = {
    ("python", "3.11"): Recipe("python", "3.11"),
    ("pytorch", "2.13"): Recipe("pytorch", "2.13", ("torch==2.13.0", "scikit-learn", "numpy")),
    ("tensorflow", "2.21"): Recipe("tensorflow", "2.21", ("tensorflow-cpu==2.21.0", "scikit-learn", "numpy")),
}


@dataclass(frozen=True)
class FrameworkImage:
    """A framework image the engine holds, as an agent advertises it."""

    name: str
    version: str
    image_id: str
    digest: str

    @property
    def reference(self) -> str:
        return image_reference(self.name, self.version)


@dataclass(frozen=True)
class BuildResult:
    reference: str
    image_id: str
    key: str
    skipped: bool
    seconds: float


def image_reference(framework: str, version: str) -> str:
    return f"{REPOSITORY_PREFIX}{framework}:{version}"


def recipe_for(framework: str, version: str) -> Recipe:
    """The recipe of a framework version, or an error naming it and what can be built."""
    found = RECIPES.get((framework, version))
    if found is None:
        known = ", ".join(f"{name} {ver}" for name, ver in sorted(RECIPES))
        raise ImageError(f"no image recipe for framework {framework!r} version {version!r}; known: {known}")
    return found


def helper_files() -> dict[str, bytes]:
    """The files of the light ``runyard`` package that go into every image, by name."""
    root = Path(runyard.__file__).parent
    return {name: (root / name).read_bytes() for name in _HELPER_FILES}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_key(recipe: Recipe, wheel_hashes: Mapping[str, str], helper: Mapping[str, bytes]) -> str:
    """A hash over every input of a build: equal keys mean an equal image (up to Debian's point releases)."""
    inputs = {
        "format": RECIPE_FORMAT,
        "suite": DEBIAN_SUITE,
        "framework": recipe.framework,
        "version": recipe.version,
        "packages": sorted(recipe.packages),
        "requirements": list(recipe.requirements),
        "excluded": list(_EXCLUDED_PATHS),
        # The image's configuration (user, environment, labels) but the key's own label.
        "config": image_changes(recipe, ""),
        "wheels": dict(sorted(wheel_hashes.items())),
        "helper": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(helper.items())},
    }
    return "sha256:" + hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def image_changes(recipe: Recipe, key: str) -> list[str]:
    """Dockerfile-style instructions applied at import: labels, user, environment."""
    return [
        f"LABEL {LABEL_FRAMEWORK}={recipe.framework}",
        f"LABEL {LABEL_VERSION}={recipe.version}",
        f"LABEL {LABEL_BUILD_KEY}={key}",
        f"ENV PATH={IMAGE_PATH}",
        "ENV LANG=C.UTF-8",
        "ENV PYTHONDONTWRITEBYTECODE=1",
        f"USER {IMAGE_USER}",
        "WORKDIR /",
        'CMD ["python3"]',
    ]


def mmdebstrap_command(recipe: Recipe, wheelhouse: Path | None, helper_dir: Path, target: Path) -> list[str]:
    """The mmdebstrap invocation that writes the image's root file system as a tarball."""
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--quiet",
        "--include=" + ",".join(recipe.packages),
        "--aptopt=Acquire::Languages none",
        *(f"--dpkgopt=path-exclude={p}" for p in _EXCLUDED_PATHS),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        f'--customize-hook=mkdir -p "$1{_SITE_PACKAGES}"',
        f"--customize-hook=copy-in {helper_dir} {_SITE_PACKAGES}",
    ]
    if wheelhouse is not None and recipe.requirements:
        inside = f"/tmp/{wheelhouse.name}"
        pip_wheels = sorted(wheelhouse.glob("pip-*.whl"))
        if not pip_wheels:
            raise ImageError(f"no pip wheel in {wheelhouse} to install the framework's wheels with")
        # pip runs from its own wheel (a zip on sys.path): the image needs no python3-pip and keeps no pip.
        pip = [
            "python3", f"{inside}/{pip_wheels[-1].name}/pip", "install", "--quiet", "--no-index",
            "--find-links", inside, "--no-cache-dir", "--break-system-packages", "--root-user-action=ignore",
            "--disable-pip-version-check", *recipe.requirements,
        ]  # fmt: skip
        cmd += [
            f"--customize-hook=copy-in {wheelhouse} /tmp",
            '--customize-hook=chroot "$1" ' + shlex.join(pip),
            f'--customize-hook=rm -rf "$1{inside}"',
        ]
    cmd += [
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/* "$1"/root/.cache',
        DEBIAN_SUITE,
        str(target),
    ]
    return cmd


def download_wheels(recipe: Recipe, dest: Path) -> dict[str, str]:
    """Fetch the recipe's wheels (and pip's, to install them with) into dest; {file name: sha256}."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest)]
    if f"{sys.version_info.major}.{sys.version_info.minor}" != IMAGE_PYTHON:
        # Another host Python would pick its own wheels: ask for the image's interpreter instead.
        cmd += ["--python-version", IMAGE_PYTHON, "--implementation", "cp", "--only-binary=:all:"]
    cmd += [*recipe.requirements, "pip"]
    _run(cmd, f"downloading the wheels of {recipe.framework} {recipe.version}")
    return {p.name: file_sha256(p) for p in sorted(dest.iterdir()) if p.is_file()}


def _run(cmd: Sequence[str], what: str) -> None:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise ImageError(
            f"{what}: {cmd[0]} is not installed (`apt-get install mmdebstrap`, see docs/operating.md)"
        ) from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def image_key(client: docker.DockerClient, reference: str) -> tuple[str, str] | None:
    """(image id, build key) of the image the engine holds under reference, or None."""
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    return str(image.id), str((image.labels or {}).get(LABEL_BUILD_KEY, ""))


def build_image(
    client: docker.DockerClient,
    framework: str,
    version: str,
    *,
    force: bool = False,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BuildResult:
    """Build (or find up to date) the image of a framework version; see the module docstring.

    Two builds of one image on a host take turns (a lock file): the second then finds
    the first's image up to date instead of building it again beside it.
    """
    recipe = recipe_for(framework, version)
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed: `apt-get install mmdebstrap` (see docs/operating.md)")
    started = time.monotonic()
    try:
        with _build_lock(recipe, progress):
            return _build(client, recipe, force, workdir, progress, started)
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as e:
        if isinstance(e, docker.errors.APIError):
            raise ImageError(f"the engine refused a request while building {recipe.reference}: {e}") from e
        raise ImageError(f"lost the engine while building {recipe.reference} (did it stop?): {e}") from e


@contextlib.contextmanager
def _build_lock(recipe: Recipe, progress: Callable[[str], None]) -> Iterator[None]:
    folder = Path(tempfile.gettempdir()) / f"runyard-images-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    with (folder / f"{recipe.framework}-{recipe.version}.lock").open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build of {recipe.reference} on this host")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(
    client: docker.DockerClient,
    recipe: Recipe,
    force: bool,
    workdir: Path | None,
    progress: Callable[[str], None],
    started: float,
) -> BuildResult:
    with tempfile.TemporaryDirectory(prefix="runyard-image-", dir=workdir) as tmp:
        folder = Path(tmp)
        wheels: dict[str, str] = {}
        wheelhouse: Path | None = None
        if recipe.requirements:
            progress(f"downloading wheels: {' '.join(recipe.requirements)}")
            wheelhouse = folder / "wheelhouse"
            wheelhouse.mkdir()
            wheels = download_wheels(recipe, wheelhouse)
        helper = helper_files()
        key = build_key(recipe, wheels, helper)
        existing = image_key(client, recipe.reference)
        if existing is not None and existing[1] == key and not force:
            progress(f"{recipe.reference} is up to date")
            return BuildResult(recipe.reference, existing[0], key, True, time.monotonic() - started)
        helper_dir = folder / "runyard"
        helper_dir.mkdir()
        for name, data in helper.items():
            (helper_dir / name).write_bytes(data)
        tarball = folder / "rootfs.tar"
        progress(f"building the root file system (Debian {DEBIAN_SUITE}: {', '.join(recipe.packages)})")
        _run(mmdebstrap_command(recipe, wheelhouse, helper_dir, tarball), "mmdebstrap")
        if wheelhouse is not None:
            shutil.rmtree(wheelhouse)
        size_mb = tarball.stat().st_size / 1e6
        progress(f"importing {size_mb:.0f} MB into the engine as {recipe.reference}")
        image_id = import_tarball(client, tarball, recipe.reference, image_changes(recipe, key))
    if existing is not None and existing[0] != image_id:
        _remove_quietly(client, existing[0])
    return BuildResult(recipe.reference, image_id, key, False, time.monotonic() - started)


def import_tarball(client: docker.DockerClient, tarball: Path, reference: str, changes: list[str]) -> str:
    """Import a root file system tarball under reference; returns the image id.

    The tag goes in ``repository`` ("name:tag"): Podman 4.3's compatible API ignores
    the separate ``tag`` parameter (the image would be tagged ``latest``).
    """
    try:
        client.api.import_image(src=str(tarball), repository=reference, changes=changes)
        return str(client.images.get(reference).id)
    except docker.errors.APIError as e:
        raise ImageError(f"the engine refused to import {reference}: {e.explanation or e}") from e


def _remove_quietly(client: docker.DockerClient, image_id: str) -> None:
    """Drop the image a rebuild replaced, unless a container still uses it (it goes later, by hand)."""
    with contextlib.suppress(docker.errors.APIError):
        client.images.remove(image_id, noprune=False)


def framework_images(client: docker.DockerClient) -> list[FrameworkImage]:
    """The framework images the engine holds (tagged, labelled with framework and version)."""
    found: dict[tuple[str, str], FrameworkImage] = {}
    for image in client.images.list(filters={"label": LABEL_FRAMEWORK}):
        labels = image.labels or {}
        name, version = labels.get(LABEL_FRAMEWORK, ""), labels.get(LABEL_VERSION, "")
        if not name or not version or image_reference(name, version) not in (image.tags or []):
            continue
        found[(name, version)] = FrameworkImage(name, version, str(image.id), image_digest(image.attrs))
    return [found[k] for k in sorted(found)]


def image_digest(attrs: Mapping[str, object]) -> str:
    """The image's content digest: its manifest's from RepoDigests, else its id (the config's digest)."""
    digests = attrs.get("RepoDigests") or []
    if isinstance(digests, list):
        for entry in digests:
            if isinstance(entry, str) and "@" in entry:
                return entry.split("@", 1)[1]
    return str(attrs.get("Id", ""))
