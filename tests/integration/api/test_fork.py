"""Fork through the API: `from_run` in a manifest or `runyard submit --from RUN`, against a live stack.

A run of account beta writes a checkpoint file that its agent stores and
reports; beta forks from it (each new run's first attempt stages that
checkpoint, and `runyard show` says so), alpha may not (NOT_FOUND, as for an
unknown run), and a run without a checkpoint cannot be forked
(FAILED_PRECONDITION naming it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest

from runyard.v1 import admin_service_pb2, common_pb2, experiment_service_pb2, run_service_pb2
from tests.integration.api.helpers import RS, code_of, create, details, manifest, wait_state
from tests.support.services import wait_until
from tests.support.stack import Stack, Stubs, cli

pytestmark = pytest.mark.integration

LONG = 'python -c "import time; time.sleep(120)"'
WRITE_AND_WAIT = (
    'echo v1 > "$CHECKPOINT_DIR/state.txt.tmp" && mv "$CHECKPOINT_DIR/state.txt.tmp" "$CHECKPOINT_DIR/state.txt"'
    " && sleep 120"
)
READ_STATE = 'echo "staged $(cat "$CHECKPOINT_DIR/state.txt")"'


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
    stack.start_agent("agent-1", 4, "--checkpoint-interval", "0.5")
    with stack.channel() as admin_channel:
        keys = _accounts(stack, Stubs(admin_channel))
    with stack.channel(keys["beta"]) as beta_channel, stack.channel(keys["alpha"]) as alpha_channel:
        beta, alpha = Stubs(beta_channel), Stubs(alpha_channel)
        # The source writes one checkpoint file; its agent stores it (every 0.5 s when it changed) and reports it.
        source = create(beta, manifest(WRITE_AND_WAIT, name="source")).experiment.runs[0].id
        wait_state(beta, source, {RS.RUN_STATE_RUNNING})
        bare = create(beta, manifest(LONG, name="bare")).experiment.runs[0].id

        def listed() -> run_service_pb2.GetRunResponse | None:
            reply = beta.runs.GetRun(run_service_pb2.GetRunRequest(run_id=source), timeout=10)
            return reply if reply.checkpoints else None

        shown = wait_until(listed, 30, "the checkpoint is listed")
        assert [c.checkpoint_id for c in shown.checkpoints] == ["1-1"]

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
        path.write_text(manifest(READ_STATE, name="fork", extra=f"from_run: {bare}\n"), encoding="utf-8")
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
        assert f"checkpoint 1-1 of run {source} (step 0)" in text
        logs = subprocess.run(cli("logs", forked), env=env, capture_output=True, text=True, timeout=60).stdout
        assert "staged v1" in logs, logs
        source_text = subprocess.run(cli("show", source), env=env, capture_output=True, text=True, timeout=60).stdout
        assert "1-1 (latest)" in source_text and "afresh" in source_text
        beta.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=source), timeout=10)
        beta.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=bare), timeout=10)
