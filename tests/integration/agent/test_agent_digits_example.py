"""examples/digits-pytorch trained for real (PyTorch on the CPU) through the agent.

Two runs side by side on a two-slot agent: one reports metrics through the
manifest's stdout pattern, the other through runyard.log (RUNYARD_USE_HELPER=1,
no pattern). Both must reach val_accuracy > 0.9 and store model.pt.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from google.protobuf.struct_pb2 import Value

from runyard.agent.config import AgentConfig
from runyard.objectstore import open_store
from runyard.v1.agent_pb2 import AgentReport, WorkAssignment
from runyard.v1.common_pb2 import Framework, MetricPattern, RunSpec
from tests.integration.agent.harness import metric_points, new_agent_id, running_agent, transitions
from tests.support.services import NatsServer

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits-pytorch"


def pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("train.py", "prepare_data.py"):
            tar.add(folder / name, arcname=name)
    return buf.getvalue()


def test_digits_example_trains_and_reports_metrics_both_ways(tmp_path: Path, nats_server: NatsServer) -> None:
    manifest = yaml.safe_load((EXAMPLE / "manifest.yaml").read_text())
    storage_root = (tmp_path / "objects").as_uri()
    store = open_store(storage_root, None)
    store.put_bytes("s3://code/digits.tar.gz", pack(EXAMPLE))
    data_dir = tmp_path / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "prepare_data.py"), str(data_dir)], check=True)
    store.upload_dir(data_dir, manifest["data"])

    def assignment(run_id: str, lr: float, hidden: int, helper: bool) -> WorkAssignment:
        command = manifest["command"].replace("${lr}", str(lr)).replace("${hidden}", str(hidden))
        spec = RunSpec(
            command=command,
            framework=Framework(**manifest["framework"]),
            code_uri="s3://code/digits.tar.gz",
            data_uri=manifest["data"],
            results_uri=f"{manifest['results']}/{run_id}",
            hyperparameters={"lr": Value(number_value=lr), "hidden": Value(number_value=hidden)},
            metric_patterns=[] if helper else [MetricPattern(regex=r) for r in manifest["metrics"]["patterns"]],
            env={"RUNYARD_USE_HELPER": "1"} if helper else {},
        )
        return WorkAssignment(run_id=run_id, attempt=1, experiment_id="exp-digits", spec=spec)

    runs = [assignment("run-pattern", 0.01, 64, helper=False), assignment("run-helper", 0.003, 128, helper=True)]
    config = AgentConfig(
        agent_id=new_agent_id(),
        nats_url=nats_server.url,
        slots=2,
        work_dir=str(tmp_path / "work"),
        storage_root=storage_root,
    )

    async def scenario() -> dict[str, list[AgentReport]]:
        async with running_agent(config) as agent:
            for run in runs:
                await agent.send_work(run)
            by_run: dict[str, list[AgentReport]] = {run.run_id: [] for run in runs}
            done: set[str] = set()
            while done != set(by_run):
                report = await agent.next_report(timeout=60)
                by_run[report.run_id].append(report)
                if report.WhichOneof("body") in ("completed", "failed", "canceled"):
                    done.add(report.run_id)
            return by_run

    by_run = asyncio.run(scenario())
    for run in runs:
        reports = by_run[run.run_id]
        moves = transitions(reports)
        assert [k for k in moves if k != "checkpointed"] == ["staging", "started", "uploading", "completed"], moves
        # The example saves its state each epoch: the agent's last checkpoint (before the end) holds epoch 10.
        saved = [r.checkpointed.checkpoint for r in reports if r.HasField("checkpointed")]
        assert saved and saved[-1].step == 10 and moves.index("completed") > moves.index("checkpointed"), moves
        points = metric_points(reports)
        source = "jsonl" if run.run_id == "run-helper" else "stdout"
        assert {p.source for p in points} == {source}  # one source only: no point counted twice
        accuracy = sorted((p.step, p.value) for p in points if p.name == "val_accuracy")
        assert [step for step, _ in accuracy] == list(range(1, 11))
        assert accuracy[-1][1] > 0.9
        assert len([p for p in points if p.name == "train_loss"]) == 10
        results = run.spec.results_uri
        assert store.exists(f"{results}/model.pt")
        summary = json.loads(store.get_bytes(f"{results}/metrics.json"))
        assert summary["val_accuracy"] == pytest.approx(accuracy[-1][1], abs=1e-4)
        assert summary["hyperparameters"]["hidden"] == int(run.spec.hyperparameters["hidden"].number_value)
