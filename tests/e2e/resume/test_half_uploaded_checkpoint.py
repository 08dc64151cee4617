"""An agent killed while it uploads a checkpoint: that checkpoint is never restored, the one before it is.

The agent writes a checkpoint's manifest last and reports it only then. Here
the agent's S3 goes through a proxy that holds the PUT of the second
checkpoint's manifest; the agent is killed with SIGKILL while it waits on it,
with that checkpoint's files stored and its manifest not. The run's next
attempt, on another agent, must stage the first checkpoint: the second was
never reported, so nothing can restore it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runyard.v1 import common_pb2, run_service_pb2
from tests.e2e.resume.stalling_proxy import StallingProxy
from tests.support.services import AWS_TEST_ENV, MotoS3, NatsServer
from tests.support.stack import Stack, Stubs, cli

pytestmark = pytest.mark.e2e

SCRIPT = """\
import os, pathlib, time

folder = pathlib.Path(os.environ["CHECKPOINT_DIR"])
state = folder / "state.txt"
if os.environ.get("RUNYARD_RESUMED") == "1":
    print(f"restored {state.read_text()} at step {os.environ.get('RUNYARD_CHECKPOINT_STEP')}", flush=True)
else:
    for version in ("v1", "v2"):
        (folder / "state.txt.tmp").write_text(version)
        os.replace(folder / "state.txt.tmp", state)
        print(f"wrote {version}", flush=True)
        time.sleep(3)
    time.sleep(600)
"""
MANIFEST = """\
name: half-upload
framework: {name: python}
command: python hold.py
resources: {gpus: 0, cpus: 1}
results: s3://results/half-upload
max_restarts: 1
"""


def test_a_checkpoint_half_uploaded_when_its_agent_died_is_not_restored(
    tmp_path: Path, pg_url: str, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    s3: Any = moto_s3.client()
    for bucket in ("results", "runyard"):
        s3.create_bucket(Bucket=bucket)
    proxy = StallingProxy(moto_s3.endpoint_url, r"/checkpoints/1-2\.json$").start()
    stack = Stack(
        root=tmp_path,
        database_url=pg_url,
        nats_url=nats_server.url,
        s3_endpoint_url=proxy.endpoint_url,
        extra_env={**AWS_TEST_ENV, "RUNYARD_ATTEMPT_LEASE": "8"},
    )
    code = tmp_path / "code"
    code.mkdir()
    (code / "hold.py").write_text(SCRIPT, encoding="utf-8")
    (code / "manifest.yaml").write_text(MANIFEST, encoding="utf-8")
    try:
        stack.start_server(agent_timeout="3")
        first = stack.start_agent("agent-1", 1, "--checkpoint-interval", "0.5")
        env = {**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": stack.admin_key}
        out = subprocess.run(
            cli("submit", str(code / "manifest.yaml"), "-o", "json"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        run_id = json.loads(out.stdout)["runs"][0]["id"]
        assert proxy.stalled.wait(120), "the second checkpoint's manifest was never sent"
        first.stop(signal.SIGKILL)
        prefix = f"half-upload/{run_id}/checkpoints/"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix=prefix).get("Contents", [])}
        assert f"{prefix}1-2/state.txt" in keys and f"{prefix}1-2.json" not in keys, keys
        assert f"{prefix}1-1.json" in keys, keys
        # The next agent reaches moto directly.
        stack.start_agent("agent-2", 1, "--checkpoint-interval", "0.5", "--s3-endpoint-url", moto_s3.endpoint_url)
        with stack.channel() as channel:
            stubs = Stubs(channel)
            ended = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)

            def done() -> run_service_pb2.GetRunResponse | None:
                reply = stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=10)
                return reply if reply.run.state in ended else None

            deadline = time.monotonic() + 120
            while (reply := done()) is None:
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.1)
        assert reply.run.state == common_pb2.RUN_STATE_COMPLETED, reply.run
        assert [c.checkpoint_id for c in reply.checkpoints if c.attempt == 1] == ["1-1"]
        assert reply.attempts[1].agent_id == "agent-2"
        assert reply.attempts[1].resumed_from.checkpoint_id == "1-1"
        logs = subprocess.run(cli("logs", run_id), env=env, capture_output=True, text=True, timeout=60).stdout
        assert "restored v1 at step" in logs and "restored v2" not in logs, logs
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
        proxy.stop()
