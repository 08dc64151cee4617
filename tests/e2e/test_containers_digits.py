"""The digits grid in containers, from submit to downloaded results, on the real stack.

PostgreSQL, the machine's NATS, moto's S3 server on loopback and two agents with
`--runtime container` on the session's Podman service: each run trains real PyTorch
in a fresh sandboxed container of localhost/runyard/pytorch:2.13 (built by the
`pytorch_image` fixture when missing). Checks what a user relies on: every run
completes, the best reaches the accuracy the process runtime reaches, each model
is stored under its own results prefix and downloads, and metrics and logs came
through the container's output files.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_digits import EXAMPLE, MACHINE_NATS, check_experiment, check_run_outputs, prepare_data, run_cli
from tests.support.services import AWS_TEST_ENV, MotoS3
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def test_digits_grid_in_containers_on_postgres_nats_and_s3(
    tmp_path: Path, pg_url: str, moto_s3: MotoS3, container_engine: str, pytorch_image: str
) -> None:
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
    suffix = uuid.uuid4().hex[:8]
    agents = [f"e2e-ctr-{suffix}-{i}" for i in (1, 2)]
    try:
        stack.start_server()
        for agent_id in agents:
            stack.start_agent(agent_id, 2, "--runtime", "container", "--engine-url", container_engine)
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
            prefix = f"digits-mlp/{run['id']}/"
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix=prefix)["Contents"]]
            assert f"{prefix}model.pt" in keys
        check_run_outputs(runs[0]["id"], env)
        best = max(runs, key=lambda r: r["latest_metrics"]["val_accuracy"])
        target = tmp_path / "downloaded"
        run_cli("download", best["id"], str(target), env=env)
        assert any(p.name == "model.pt" and p.stat().st_size > 0 for p in target.rglob("*"))

        # The runs really ran in containers: the agents say so and advertised the image they used.
        listed = json.loads(run_cli("admin", "agents", "-o", "json", env=env).stdout)
        ours = [a for a in listed if a["id"] in agents]
        assert len(ours) == 2
        for agent in ours:
            assert agent["runtime"] == "container"
            frameworks = {(f["name"], f["version"]): f for f in agent["frameworks"]}
            assert frameworks[("pytorch", "2.13")]["digest"].startswith("sha256:")
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
