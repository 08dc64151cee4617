"""kill -9 of the agent that holds a run mid-training: the run resumes on another agent from its checkpoint.

A real stack (PostgreSQL, NATS, moto's S3, `runyard server` and agents as
processes) runs the digits-pytorch example for N epochs. When the run's
checkpoint of epoch K is stored, its agent is killed with SIGKILL and a second
agent comes up. The run must end COMPLETED on the second agent, having trained
N epochs in all (K on the first, N-K on the second: never from scratch), with
each epoch's metrics once in its history, and its final model must score
exactly as an uninterrupted run of the same command does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runyard.v1 import common_pb2, run_service_pb2
from tests.support.services import AWS_TEST_ENV, MotoS3, NatsServer
from tests.support.stack import Stack, Stubs, cli

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[2] / "examples" / "digits-pytorch"
EPOCHS, KILL_AT = 6, 3
ARGS = f"--lr 0.01 --hidden 32 --dropout 0.3 --seed 7 --epochs {EPOCHS}"
EPOCH_LINE = re.compile(r"^epoch (\d+) train_loss=\S+ val_accuracy=\S+$", re.M)
AGENT_TIMEOUT_S = 3
MANIFEST = f"""\
name: resume-e2e
framework: {{name: pytorch, version: "2.13"}}
command: python slow_train.py {ARGS}
resources: {{gpus: 0, cpus: 1}}
results: s3://results/resume-e2e
max_restarts: 1
env: {{EPOCH_PAUSE_S: "3"}}
metrics:
  patterns:
    - 'epoch (?P<step>\\d+) train_loss=(?P<train_loss>[0-9.]+) val_accuracy=(?P<val_accuracy>[0-9.]+)'
"""


def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(EXAMPLE / "train.py", code / "train.py")
    shutil.copy(HERE / "slow_train.py", code / "slow_train.py")
    (code / "manifest.yaml").write_text(MANIFEST, encoding="utf-8")
    return code


def uninterrupted(tmp_path: Path) -> dict[str, Any]:
    """The same command, run straight through with no agent, no checkpoints and no pause."""
    result = tmp_path / "uninterrupted"
    environ = {k: v for k, v in os.environ.items() if k not in ("CHECKPOINT_DIR", "DATA_DIR", "RUNYARD_RESUMED")}
    environ["RESULT_DIR"] = str(result)
    subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), *ARGS.split()], env=environ, check=True, timeout=300, cwd=tmp_path
    )
    loaded: dict[str, Any] = json.loads((result / "metrics.json").read_text())
    return loaded


def wait_for(what: str, check: Any, timeout: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            print(stack.logs())
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"runyard {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_run_whose_agent_is_killed_resumes_on_another_from_its_checkpoint(
    tmp_path: Path, pg_url: str, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    s3: Any = moto_s3.client()
    for bucket in ("results", "runyard"):
        s3.create_bucket(Bucket=bucket)
    stack = Stack(
        root=tmp_path,
        database_url=pg_url,
        nats_url=nats_server.url,
        s3_endpoint_url=moto_s3.endpoint_url,
        extra_env={**AWS_TEST_ENV, "RUNYARD_ATTEMPT_LEASE": "8"},
    )
    try:
        stack.start_server(agent_timeout=str(AGENT_TIMEOUT_S))
        first = stack.start_agent("agent-1", 1, "--checkpoint-interval", "0.5")
        env = {**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": stack.admin_key}
        code = code_dir(tmp_path)
        submitted = json.loads(run_cli(env, "submit", str(code / "manifest.yaml"), "-o", "json"))
        run_id = submitted["runs"][0]["id"]
        with stack.channel() as channel:
            stubs = Stubs(channel)

            def reply() -> run_service_pb2.GetRunResponse:
                return stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=10)

            def checkpoint_at_kill_epoch() -> common_pb2.Checkpoint | None:
                checkpoints = reply().checkpoints
                return checkpoints[-1] if checkpoints and checkpoints[-1].step >= KILL_AT else None

            stored = wait_for(f"the checkpoint of epoch {KILL_AT}", checkpoint_at_kill_epoch, 180, stack)
            assert stored.step == KILL_AT, "the run went past the kill epoch before its checkpoint was listed"
            first.stop(signal.SIGKILL)
            stack.start_agent("agent-2", 1, "--checkpoint-interval", "0.5")

            def ended() -> run_service_pb2.GetRunResponse | None:
                r = reply()
                return r if r.run.state in (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED) else None

            done = wait_for("the run to end", ended, 180, stack)
        assert done.run.state == common_pb2.RUN_STATE_COMPLETED, done.run
        assert [(a.attempt, a.agent_id, a.ended) for a in done.attempts] == [
            (1, "agent-1", "re-queued: agent_lost"),
            (2, "agent-2", "completed"),
        ]
        assert done.attempts[1].resumed_from.checkpoint_id == stored.checkpoint_id

        # N epochs in all: 1..K on agent-1, K+1..N on agent-2 (resumed from K, not from scratch).
        logs = run_cli(env, "logs", run_id)
        assert [int(e) for e in EPOCH_LINE.findall(logs)] == list(range(1, EPOCHS + 1)), logs
        assert f"resumed from epoch {KILL_AT}" in logs
        # Each step once in the metric history.
        points = json.loads(run_cli(env, "metrics", run_id, "-o", "json"))
        points = points["points"] if isinstance(points, dict) else points
        assert [int(p.get("step", 0)) for p in points if p["name"] == "val_accuracy"] == list(range(1, EPOCHS + 1))
        # The final model scores as the uninterrupted run's: the same history, to the last bit.
        body = s3.get_object(Bucket="results", Key=f"resume-e2e/{run_id}/metrics.json")["Body"].read()
        resumed, straight = json.loads(body), uninterrupted(tmp_path)
        assert resumed["resumed_from_epoch"] == KILL_AT
        assert resumed["val_accuracy"] == straight["val_accuracy"]
        assert resumed["history"] == straight["history"]
        shown = run_cli(env, "show", run_id)
        assert f"checkpoint {stored.checkpoint_id} (step {KILL_AT})" in shown
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
