"""`runyard images build|list`: the framework images of this host's container engine.

They run on the GPU host, against its engine, not against the server. The agent
package (image recipes, the engine client) is imported inside the commands, so the
rest of the command line never pays for it and a client-only installation still works.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from runyard import extras
from runyard.client import render
from runyard.client.errors import ClientError

if TYPE_CHECKING:
    import docker

    from runyard.client.commands import Context


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser) -> None:
    images = sub.add_parser(
        "images",
        help="build and list the framework images of this host's container engine",
        description="Framework images are built here, from Debian's packages and the framework's wheels, "
        "and imported into the engine (Podman or Docker Engine) that `runyard agent --runtime container` uses.",
    )
    images_sub = images.add_subparsers(dest="images_command", metavar="SUBCOMMAND", required=True)
    p = images_sub.add_parser(
        "build",
        help="build a framework image (skipped when its build inputs did not change)",
        description="Build localhost/runyard/FRAMEWORK:VERSION: Debian bookworm (mmdebstrap) with python3, "
        "the framework's wheels and the runyard.log helper. Frameworks: python 3.11, pytorch 2.13, "
        "tensorflow 2.21.",
    )
    p.set_defaults(func=cmd_images_build)
    p.add_argument("framework", metavar="FRAMEWORK", help="python, pytorch or tensorflow")
    p.add_argument("version", metavar="VERSION", help="e.g. 2.13 (the manifest's framework version)")
    _engine_flag(p)
    p.add_argument("--force", action="store_true", help="rebuild even when the image is up to date")
    p = images_sub.add_parser("list", help="the framework images the engine holds", parents=[output])
    p.set_defaults(func=cmd_images_list)
    _engine_flag(p)


def _engine_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine-url",
        metavar="URL",
        help="the engine's API socket, e.g. unix:///run/podman/podman.sock "
        "(default: $DOCKER_HOST, then Podman's socket, then Docker's; with none of them but podman installed, "
        "a podman service started for the command)",
    )


@contextlib.contextmanager
def _engine(url: str | None, ctx: Context) -> Iterator[docker.DockerClient]:
    """A client of the engine; with no engine named or running but Podman installed, a podman service of its own.

    Podman needs no daemon: a service started for one command fills the same storage
    the host's socket (and the agent) would use, so `runyard images build` works on a
    host where nobody started `podman.socket` yet.
    """
    try:
        from runyard.agent import engine
    except ModuleNotFoundError as e:
        raise extras.explain("`runyard images`", e, "agent") from None
    service = None
    named = bool(os.environ.get("DOCKER_HOST")) or any(
        Path(p).exists() for p in (engine.PODMAN_SOCKET, engine.DOCKER_SOCKET)
    )
    if url is None and not named and shutil.which("podman"):
        ctx.err.print("no engine socket found: starting a podman service for this command", markup=False)
        try:
            service = engine.start_podman_service()
        except engine.EngineError as e:
            raise ClientError(str(e)) from None
        url = service.url
    try:
        # Importing a framework image can take minutes: the client waits as long.
        client = engine.connect(url, timeout_s=1800)
    except engine.EngineError as e:
        if service is not None:
            service.stop()
        raise ClientError(str(e)) from None
    try:
        yield client
    finally:
        client.close()
        if service is not None:
            service.stop()


def cmd_images_build(args: argparse.Namespace, ctx: Context) -> int:
    extras.require("`runyard images`", "agent")
    from runyard.agent import images

    try:
        images.recipe_for(args.framework, args.version)
    except images.ImageError as e:
        raise ClientError(str(e)) from None
    started = time.monotonic()
    try:
        reference = images.image_reference(args.framework, args.version)
        with _engine(args.engine_url, ctx) as client, ctx.err.status(f"building {reference}") as status:

            def progress(message: str) -> None:
                ctx.err.print(f"[{time.monotonic() - started:5.0f}s] {message}", markup=False, highlight=False)
                status.update(message)

            result = images.build_image(client, args.framework, args.version, force=args.force, progress=progress)
    except images.ImageError as e:
        raise ClientError(str(e)) from None
    verb = "up to date" if result.skipped else f"built in {result.seconds:.0f}s"
    ctx.out.print(f"{result.reference} {verb} ({result.image_id})", markup=False, highlight=False)
    return 0


def cmd_images_list(args: argparse.Namespace, ctx: Context) -> int:
    extras.require("`runyard images`", "agent")
    from runyard.agent import images

    with _engine(args.engine_url, ctx) as client:
        found = images.framework_images(client)
    if ctx.json:
        render.print_json(
            [
                {"name": i.name, "version": i.version, "image": i.reference, "image_id": i.image_id, "digest": i.digest}
                for i in found
            ]
        )
    elif not found:
        ctx.err.print("no framework images: build one with `runyard images build pytorch 2.13`", markup=False)
    else:
        table = Table(box=None)
        for column in ("FRAMEWORK", "VERSION", "IMAGE", "DIGEST"):
            table.add_column(column)
        for i in found:
            table.add_row(i.name, i.version, i.reference, i.digest)
        ctx.out.print(table)
    return 0
