"""Fork through the API: `from_run` in a manifest or `runyard submit --from RUN`, against a live stack.

A run of account beta records a checkpoint (its agent's `checkpointed`
report); beta forks from it (each new run's first attempt resumes from that
checkpoint, and `runyard show` says so), alpha may not (NOT_FOUND, as for an
unknown run), and a run without a checkpoint cannot be forked
(FAILED_PRECONDITION naming it).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import grpc
import nats
import pytest

from runyard import bus
from runyard.v1 import admin_service_pb2, agent_pb2, common_pb2, events_pb2, experiment_service_pb2, run_service_pb2
from tests.integration.api.helpers import RS, code_of, create, details, manifest, wait_state
from tests.support.services import wait_until
from tests.support.stack import Stack, Stubs, cli

pytestmark = pytest.mark.integration

LONG = 'python -c "import time; time.sleep(120)"'


async def _publish(url: str, key: str, report: agent_pb2.AgentReport) -> None:
    nc = await nats.connect(url)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        await nc.jetstream().publish(bus.reports_subject(report.agent_id), report.SerializeToString(), headers=headers)
    finally:
        await nc.close()


def _accounts(stack: Stack, admin: Stubs) -> dict[str, str]:
    keys = {}
    for account in ("alpha", "beta"):
        admin.admin.CreateAccount(
            admin_service_pb2.CreateAccountRequest(account_id=account, gpu_quota=2, storage_prefixes=["s3://results/"]),
            timeout=20,
        )
        keys[account] = admin.admin.CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(account_id=account, role=common_pb2.ROLE_USER), timeout=20
        ).secret
    return keys


def _submit(stubs: Stubs, text: str, from_run: str = "") -> experiment_service_pb2.CreateExperimentResponse:
    return stubs.experiments.CreateExperiment(
        experiment_service_pb2.CreateExperimentRequest(manifest_yaml=text, from_run=from_run), timeout=30
    )


def test_fork_from_a_checkpoint_of_ones_own_run_only(stack: Stack, tmp_path: Path) -> None:
    stack.start_server()
    stack.start_agent("agent-1", 4)
    with stack.channel() as admin_channel:
        keys = _accounts(stack, Stubs(admin_channel))
    with stack.channel(keys["beta"]) as beta_channel, stack.channel(keys["alpha"]) as alpha_channel:
        beta, alpha = Stubs(beta_channel), Stubs(alpha_channel)
        source = create(beta, manifest(LONG, name="source")).experiment.runs[0].id
        wait_state(beta, source, {RS.RUN_STATE_RUNNING})
        bare = create(beta, manifest(LONG, name="bare")).experiment.runs[0].id

        checkpoint = common_pb2.Checkpoint(
            checkpoint_id="1-1",
            run_id=source,
            attempt=1,
            step=7,
            size_bytes=123,
            files=1,
            time_us=1_700_000_000_000_000,
        )
        report = agent_pb2.AgentReport(
            event_id=str(uuid.uuid4()),
            agent_id="agent-1",
            run_id=source,
            checkpointed=events_pb2.RunCheckpointed(attempt=1, checkpoint=checkpoint),
        )
        asyncio.run(_publish(stack.nats_url, stack.agent_key, report))

        def listed() -> run_service_pb2.GetRunResponse | None:
            reply = beta.runs.GetRun(run_service_pb2.GetRunRequest(run_id=source), timeout=10)
            return reply if reply.checkpoints else None

        shown = wait_until(listed, 30, "the checkpoint is listed")
        assert [(c.checkpoint_id, c.step) for c in shown.checkpoints] == [("1-1", 7)]

        # Another account's run is no more visible than an unknown one; a run without a checkpoint says so.
        for stubs, run_id in ((alpha, source), (beta, "run-nosuchrun0")):
            with pytest.raises(grpc.RpcError) as err:
                _submit(stubs, manifest("true", name="fork"), from_run=run_id)
            assert code_of(err.value) == grpc.StatusCode.NOT_FOUND and run_id in details(err.value)
        with pytest.raises(grpc.RpcError) as err:
            _submit(beta, manifest("true", name="fork", extra=f"from_run: {bare}\n"))
        assert code_of(err.value) == grpc.StatusCode.FAILED_PRECONDITION and bare in details(err.value)

        # The manifest names the checkpoint-less run; --from overrides it, through the CLI.
        path = tmp_path / "fork.yaml"
        path.write_text(manifest("true", name="fork", extra=f"from_run: {bare}\n"), encoding="utf-8")
        env = {**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": keys["beta"]}
        done = subprocess.run(
            cli("submit", str(path), "--from", source, "--no-code", "-o", "json"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        forked = json.loads(done.stdout)["runs"][0]["id"]
        reply = wait_state(beta, forked, {RS.RUN_STATE_COMPLETED})
        (attempt,) = reply.attempts
        assert (attempt.resumed_from.run_id, attempt.resumed_from.checkpoint_id) == (source, "1-1")

        shown_json = subprocess.run(
            cli("show", forked, "-o", "json"), env=env, capture_output=True, text=True, timeout=60
        )
        doc = json.loads(shown_json.stdout)
        assert doc["attempts"][0]["resumed_from"]["checkpoint_id"] == "1-1"
        assert doc["checkpoints"] == []
        text = subprocess.run(cli("show", forked), env=env, capture_output=True, text=True, timeout=60).stdout
        assert f"checkpoint 1-1 of run {source} (step 7)" in text
        source_text = subprocess.run(cli("show", source), env=env, capture_output=True, text=True, timeout=60).stdout
        assert "1-1 (latest)" in source_text and "afresh" in source_text
        beta.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=source), timeout=10)
        beta.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=bare), timeout=10)
