"""The digits grid from submit to results, as a user runs it, on two stacks.

1. The real stack: PostgreSQL, the machine's NATS, moto's S3 server on
   loopback (reached through boto3 exactly as AWS would be) and one agent.
2. The embedded stack of `runyard up`: SQLite, its own nats-server, file://
   storage and a local agent, all in one folder.

Each trains real PyTorch models on the CPU and checks what a user relies on:
every run completes, its model is stored under its own results prefix, and its
metrics and logs are readable afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import AWS_TEST_ENV, MotoS3
from tests.support.stack import Stack, cli

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-pytorch"
MACHINE_NATS = os.environ.get("RUNYARD_TEST_NATS_URL", "nats://127.0.0.1:4222")


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"runyard {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def prepare_data(tmp_path: Path) -> Path:
    target = tmp_path / "digits.npz"
    subprocess.run([sys.executable, str(EXAMPLE / "prepare_data.py"), str(target)], check=True, timeout=120)
    return target


def check_experiment(shown: dict[str, Any], run_count: int) -> list[dict[str, Any]]:
    runs = shown["runs"]
    assert isinstance(runs, list) and len(runs) == run_count
    for run in runs:
        assert run["state"] == "RUN_STATE_COMPLETED", run
        assert 0.0 < run["latest_metrics"]["val_accuracy"] <= 1.0
    assert max(r["latest_metrics"]["val_accuracy"] for r in runs) > 0.9
    return runs


def check_run_outputs(run_id: str, env: dict[str, str]) -> None:
    metrics = json.loads(run_cli("metrics", run_id, "-o", "json", env=env).stdout)
    points = metrics["points"] if isinstance(metrics, dict) else metrics
    val = [p for p in points if p["name"] == "val_accuracy"]
    assert [int(p.get("step", 0)) for p in val] == list(range(1, 11))
    logs = run_cli("logs", run_id, env=env).stdout
    assert "epoch 10 train_loss=" in logs


def test_digits_grid_on_postgres_nats_and_s3(tmp_path: Path, pg_url: str, moto_s3: MotoS3) -> None:
    s3: Any = moto_s3.client()
    for bucket in ("datasets", "results", "runyard"):
        s3.create_bucket(Bucket=bucket)
    stack = Stack(
        root=tmp_path,
        database_url=pg_url,
        nats_url=MACHINE_NATS,
        s3_endpoint_url=moto_s3.endpoint_url,
        extra_env=AWS_TEST_ENV,
    )
    try:
        stack.start_server()
        stack.start_agent(f"e2e-{uuid.uuid4().hex[:8]}", 2)
        env = {
            **stack.env(),
            "RUNYARD_ENDPOINT": stack.endpoint,
            "RUNYARD_API_KEY": stack.admin_key,
            "RUNYARD_S3_ENDPOINT_URL": moto_s3.endpoint_url,
        }
        run_cli("data", "upload", str(prepare_data(tmp_path)), "s3://datasets/digits/digits.npz", env=env)
        experiment = json.loads(run_cli("submit", str(EXAMPLE / "manifest.yaml"), "-o", "json", env=env).stdout)
        run_cli("watch", experiment["id"], env=env, timeout=600)
        shown = json.loads(run_cli("show", experiment["id"], "-o", "json", env=env).stdout)
        runs = check_experiment(shown, 4)
        for run in runs:
            keys = [
                o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix=f"digits-mlp/{run['id']}/")["Contents"]
            ]
            assert f"digits-mlp/{run['id']}/model.pt" in keys
        check_run_outputs(runs[0]["id"], env)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def test_digits_grid_on_the_embedded_stack(tmp_path: Path) -> None:
    data_dir = tmp_path / "runyard"
    env = dict(os.environ)
    run_cli("up", "--data-dir", str(data_dir), "--port", "0", "--detach", env=env, timeout=120)
    try:
        # No setup: the state file carries the stack's admin key of account "default".
        me = json.loads(run_cli("whoami", "-o", "json", env=env).stdout)
        assert (me["account_id"], me["role"]) == ("default", "admin")
        assert oct((data_dir / "keys.yaml").stat().st_mode & 0o777) == "0o600"
        run_cli("data", "upload", str(prepare_data(tmp_path)), "s3://datasets/digits/digits.npz", env=env)
        experiment = json.loads(run_cli("submit", str(EXAMPLE / "manifest.yaml"), "-o", "json", env=env).stdout)
        run_cli("watch", experiment["id"], env=env, timeout=600)
        shown = json.loads(run_cli("show", experiment["id"], "-o", "json", env=env).stdout)
        runs = check_experiment(shown, 4)
        for run in runs:
            assert (data_dir / "objects" / "results" / "digits-mlp" / run["id"] / "model.pt").is_file()
        check_run_outputs(runs[0]["id"], env)
        # Billing: each run's one attempt is listed, ended; CPU-only runs cost no GPU time.
        attempts = json.loads(run_cli("usage", "runs", "-o", "json", env=env).stdout)
        assert sorted(a["run_id"] for a in attempts) == sorted(r["id"] for r in runs)
        assert all(a.get("ended_at") and a["gpus"] == 0 for a in attempts)
        assert json.loads(run_cli("usage", "-o", "json", env=env).stdout)["total_gpu_seconds"] == 0
        target = tmp_path / "downloaded"
        run_cli("download", runs[0]["id"], str(target), env=env)
        assert any(p.name == "model.pt" for p in target.rglob("*"))
    except BaseException:
        for log in data_dir.glob("*.log"):
            print(f"===== {log}\n{log.read_text(errors='replace')[-5000:]}")
        raise
    finally:
        subprocess.run(cli("down"), env=env, timeout=60)


def test_the_embedded_stack_with_containers_runs_its_own_engine(tmp_path: Path, python_image: str) -> None:
    """`runyard up --runtime container`: a podman service of its own, runs in containers, gone with `down`."""
    data_dir = tmp_path / "runyard"
    env = dict(os.environ)
    code = tmp_path / "code"
    code.mkdir()
    (code / "manifest.yaml").write_text(
        "name: whoami\nframework: {name: python, version: '3.11'}\ncommand: id -u\nresults: s3://results/whoami\n"
    )
    up = ("up", "--data-dir", str(data_dir), "--port", "0", "--detach", "--runtime", "container")
    run_cli(*up, env=env, timeout=180)
    try:
        experiment = json.loads(run_cli("submit", str(code / "manifest.yaml"), "-o", "json", env=env).stdout)
        run_cli("watch", experiment["id"], env=env, timeout=120)
        shown = json.loads(run_cli("show", experiment["id"], "-o", "json", env=env).stdout)
        (run,) = shown["runs"]
        assert run["state"] == "RUN_STATE_COMPLETED", run
        logs = run_cli("logs", run["id"], env=env).stdout.splitlines()
        assert [line for line in logs if not line.startswith("[agent]")] == ["65534"], logs
        (line,) = [x for x in (data_dir / "agent.log").read_text().splitlines() if "container runtime" in x]
        engine_url = json.loads(line)["engine_url"]
        assert engine_url.startswith("unix://")
    except BaseException:
        for log in data_dir.glob("*.log"):
            print(f"===== {log}\n{log.read_text(errors='replace')[-5000:]}")
        raise
    finally:
        subprocess.run(cli("down"), env=env, timeout=60)
    assert not Path(engine_url.removeprefix("unix://")).parent.exists()  # the service stopped, its folder gone
