"""What a lost agent costs a run with a 100 MB checkpoint: kill -9 to training again on another agent.

Starts a real stack (PostgreSQL, a private nats-server, moto's S3 server in
this process, a `runyard server` and two `runyard agent`s). A one-run
experiment writes a checkpoint of `--size-mb` random bytes and waits; once
its RunCheckpointed is listed, the agent holding it is killed with SIGKILL
while the second agent idles. Times, from the run's own updates (WatchRun,
server clock, same machine):

* `detect_s`: the kill to the run re-queued. A setting, not a cost of
  resuming: a silent agent's attempt is re-queued when its lease
  (`--attempt-lease`, RUNYARD_ATTEMPT_LEASE) ends, so that its orphan, which
  stops itself at the lease, never runs beside the next attempt (issue 9);
* `resume_s`: re-queued to RUNNING again on the other agent: assignment,
  dispatch, staging (code, then the checkpoint: manifest, each file, sha256
  checked) and the command's start;
* `transfer_s`: the raw download of an object of the same size from the same
  moto server, in this process (median of 3), the part of staging no
  control plane can save.

Goal (issue 11): resume_s < 2 s + transfer_s. Prints JSON.

    .venv/bin/python bench/resume_cost.py [--size-mb 100] [--repeat 3] [--agent-timeout 3] [--attempt-lease 8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.v1 import admin_service_pb2, common_pb2, run_service_pb2
from tests.support.services import AWS_TEST_ENV, MotoS3, NatsServer, postgres_database
from tests.support.stack import Stack, Stubs, cli

SCRIPT = """\
import os, pathlib, sys, time

folder = pathlib.Path(os.environ["CHECKPOINT_DIR"])
if os.environ.get("RUNYARD_RESUMED") == "1":
    size = (folder / "weights.bin").stat().st_size
    print(f"training again from a {size} byte checkpoint", flush=True)
    time.sleep(1)
else:
    tmp = folder / "weights.bin.tmp"
    tmp.write_bytes(os.urandom(int(sys.argv[1]) * 1024 * 1024))
    os.replace(tmp, folder / "weights.bin")
    print("checkpoint written", flush=True)
    time.sleep(600)
"""

MANIFEST = """\
name: resume-cost
framework: {name: python}
command: python hold.py %(size)d
resources: {gpus: 0, cpus: 1}
results: s3://results/resume-cost
max_restarts: 5
"""


def _updates(stubs: Stubs, run_id: str) -> list[Any]:
    stream = stubs.runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run_id), timeout=600)
    return [m.update for m in stream if m.update.HasField("status")]


def _seconds(update: Any) -> float:
    return float(update.time.seconds + update.time.nanos / 1e9)


def _wait(what: str, check: Any, timeout: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{stack.logs()}")
        time.sleep(0.02)


def one_loss(stack: Stack, stubs: Stubs, env: dict[str, str], code: Path, n: int) -> dict[str, float]:
    """One run: checkpoint on agent a{n}, kill -9 a{n}, resumed on the idle agent b{n}."""
    holder = stack.start_agent(f"a{n}", 1, "--checkpoint-interval", "0.5")
    out = subprocess.run(
        cli("submit", str(code / "manifest.yaml"), "-o", "json"), env=env, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    run_id = json.loads(out.stdout)["runs"][0]["id"]

    def reply() -> run_service_pb2.GetRunResponse:
        return stubs.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=10)

    _wait("the checkpoint", lambda: reply().checkpoints, 300, stack)
    stack.start_agent(f"b{n}", 1, "--checkpoint-interval", "0.5")
    _wait("the second agent", lambda: any(a.id == f"b{n}" and a.alive for a in _agents(stubs)), 60, stack)
    killed_at = time.time()
    holder.stop(signal.SIGKILL)
    ended = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)
    _wait("the run to end", lambda: reply().run.state in ended, 300, stack)
    updates = _updates(stubs, run_id)
    requeued = next(u for u in updates if u.status.state == common_pb2.RUN_STATE_QUEUED and u.status.attempt == 1)
    staging = next(u for u in updates if u.status.state == common_pb2.RUN_STATE_STAGING and u.status.attempt == 2)
    running = next(u for u in updates if u.status.state == common_pb2.RUN_STATE_RUNNING and u.status.attempt == 2)
    final = reply()
    # Drained, the spare takes no more runs: the next round's run goes to its own first agent.
    stubs.admin.DrainAgent(admin_service_pb2.DrainAgentRequest(agent_id=f"b{n}"), timeout=10)
    _wait("the spare drained", lambda: any(a.id == f"b{n}" and a.draining for a in _agents(stubs)), 60, stack)
    if final.run.state != common_pb2.RUN_STATE_COMPLETED or final.attempts[-1].agent_id != f"b{n}":
        raise RuntimeError(f"run {run_id} did not resume on b{n}: {final}")
    return {
        "detect_s": _seconds(requeued) - killed_at,
        "resume_s": _seconds(running) - _seconds(requeued),
        "assign_to_staging_s": _seconds(staging) - _seconds(requeued),
        "staging_s": _seconds(running) - _seconds(staging),
    }


def _agents(stubs: Stubs) -> list[Any]:
    return list(stubs.admin.ListAgents(admin_service_pb2.ListAgentsRequest(), timeout=10).agents)


def raw_transfer(moto: MotoS3, size_mb: int) -> float:
    """Median seconds to download `size_mb` MiB from the same moto server with boto3 (the staging's transfer)."""
    s3: Any = moto.client()
    s3.put_object(Bucket="results", Key="bench/raw.bin", Body=os.urandom(size_mb * 1024 * 1024))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        s3.download_fileobj("results", "bench/raw.bin", io.BytesIO())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--agent-timeout", type=float, default=3.0)
    parser.add_argument("--attempt-lease", type=float, default=8.0)
    args = parser.parse_args()
    os.environ.update(AWS_TEST_ENV)
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as url:
        root = Path(tmp)
        moto = MotoS3().start()
        nats = NatsServer(root / "nats").start()
        s3: Any = moto.client()
        for bucket in ("results", "runyard"):
            s3.create_bucket(Bucket=bucket)
        stack = Stack(
            root=root,
            database_url=url,
            nats_url=nats.url,
            s3_endpoint_url=moto.endpoint_url,
            extra_env={**AWS_TEST_ENV, "RUNYARD_ATTEMPT_LEASE": f"{args.attempt_lease:g}"},
        )
        code = root / "code"
        code.mkdir()
        (code / "hold.py").write_text(SCRIPT, encoding="utf-8")
        (code / "manifest.yaml").write_text(MANIFEST % {"size": args.size_mb}, encoding="utf-8")
        try:
            stack.start_server(agent_timeout=str(args.agent_timeout))
            env = {**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": stack.admin_key}
            with stack.channel() as channel:
                stubs = Stubs(channel)
                losses = [one_loss(stack, stubs, env, code, n) for n in range(args.repeat)]
            transfer = raw_transfer(moto, args.size_mb)
        finally:
            stack.stop()
            nats.stop()
            moto.stop()
    resume = statistics.median(x["resume_s"] for x in losses)
    result = {
        "benchmark": "resume_cost",
        "checkpoint_mb": args.size_mb,
        "runs": args.repeat,
        "transfer_s": round(transfer, 3),
        "resume_s_median": round(resume, 3),
        "resume_minus_transfer_s": round(resume - transfer, 3),
        "detect_s_median": round(statistics.median(x["detect_s"] for x in losses), 3),
        "kill_to_training_s_median": round(statistics.median(x["detect_s"] + x["resume_s"] for x in losses), 3),
        "staging_s_median": round(statistics.median(x["staging_s"] for x in losses), 3),
        "each": [{k: round(v, 3) for k, v in x.items()} for x in losses],
        "agent_timeout_s": args.agent_timeout,
        "attempt_lease_s": args.attempt_lease,
        "goal": "resume_s < 2 s + transfer_s",
        "goal_met": resume < 2.0 + transfer,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
