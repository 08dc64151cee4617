"""The run's environment is an allowlist: nothing of the agent's own environment reaches it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runyard.agent.env import SYSTEM_PATH, build_run_env
from runyard.agent.staging import RunDirs
from runyard.v1.agent_pb2 import WorkAssignment
from runyard.v1.common_pb2 import Checkpoint, RunSpec

ALLOWED = {
    "DATA_DIR",
    "RESULT_DIR",
    "CHECKPOINT_DIR",
    "CUDA_VISIBLE_DEVICES",
    "PYTHONUNBUFFERED",
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
}
DIRS = RunDirs.under(Path("/w"), "r1", 1)


def _env(spec_env: dict[str, str] | None = None) -> dict[str, str]:
    work = WorkAssignment(run_id="r1", attempt=1, experiment_id="e1", spec=RunSpec(command="true", env=spec_env))
    return build_run_env(work, DIRS, "/opt/py/bin/python")


def test_agent_secrets_in_os_environ_never_reach_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "RUNYARD_API_KEY": "ry_agent_secret",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "AWS_ACCESS_KEY_ID": "AKIA-secret",
        "RUNYARD_NATS_NKEY": "SU-secret",
        "HOME": "/root",
        "PATH": "/root/.secret-bin:/usr/bin",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    env = _env()
    assert "RUNYARD_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env
    assert not any(value in env.values() for value in secrets.values() if value.endswith("secret"))
    assert "/root/.secret-bin" not in env["PATH"] and env["HOME"] == "/w/r1/1/home"
    assert set(env) - ALLOWED <= {k for k in env if k.startswith("RUNYARD_")}
    assert set(env) - {k for k in env if k.startswith("RUNYARD_")} == ALLOWED
    assert os.environ["RUNYARD_API_KEY"] == "ry_agent_secret"  # the agent keeps its own


def test_fixed_path_and_locale() -> None:
    env = _env()
    assert env["PATH"].split(":") == ["/opt/py/bin", *SYSTEM_PATH]
    assert env["LANG"] == env["LC_ALL"] == "C.UTF-8"
    assert env["TMPDIR"] == "/w/r1/1/tmp"


def test_the_manifest_env_cannot_override_runyards_variables() -> None:
    env = _env(
        {
            "DATA_DIR": "/elsewhere",
            "HOME": "/root",
            "TMPDIR": "/var/tmp",
            "RUNYARD_RUN_ID": "other-run",
            "RUNYARD_METRICS_FILE": "/w/other/1/metrics.jsonl",
            "PYTHONUNBUFFERED": "0",
            "LANG": "de_DE.UTF-8",
            "MINE": "1",
        }
    )
    assert env["DATA_DIR"] == "/w/r1/1/data" and env["HOME"] == "/w/r1/1/home" and env["TMPDIR"] == "/w/r1/1/tmp"
    assert env["RUNYARD_RUN_ID"] == "r1" and env["RUNYARD_METRICS_FILE"] == "/w/r1/1/output/metrics.jsonl"
    assert "RUNYARD_API_KEY" not in env
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["LANG"] == "de_DE.UTF-8" and env["MINE"] == "1"  # a default and the run's own variable


_NAMES = st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True)


@given(agent=st.dictionaries(_NAMES, st.text(alphabet="abcXYZ019-=/:", min_size=1, max_size=8), max_size=8))
def test_no_variable_of_the_agent_leaks(agent: dict[str, str]) -> None:
    before = dict(os.environ)
    try:
        os.environ.update(agent)
        env = _env()
    finally:
        os.environ.clear()
        os.environ.update(before)
    assert env == _env()


def test_checkpoint_variables_say_whether_the_attempt_resumes() -> None:
    env = _env({"CHECKPOINT_DIR": "/elsewhere", "RUNYARD_RESUMED": "1"})
    assert env["CHECKPOINT_DIR"] == "/w/r1/1/checkpoint", "the manifest cannot point a run at another folder"
    assert env["RUNYARD_ATTEMPT"] == "1" and env["RUNYARD_RESUMED"] == "0"
    assert "RUNYARD_CHECKPOINT_STEP" not in env
    work = WorkAssignment(run_id="r1", attempt=3, spec=RunSpec(command="true"))
    work.resume_from.CopyFrom(Checkpoint(checkpoint_id="2-4", run_id="r1", attempt=2, step=1200))
    resumed = build_run_env(work, DIRS, "/opt/py/bin/python")
    assert (resumed["RUNYARD_ATTEMPT"], resumed["RUNYARD_RESUMED"], resumed["RUNYARD_CHECKPOINT_STEP"]) == (
        "3",
        "1",
        "1200",
    )
