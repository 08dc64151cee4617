"""Zero-code metrics on a real agent: stdout patterns, runyard.log and TensorBoard event files agree point for point."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runyard.objectstore import open_store
from runyard.v1.agent_pb2 import AgentReport
from runyard.v1.common_pb2 import LogStream
from tests.integration.agent.harness import metric_points, running_agent, texts, transitions
from tests.integration.agent.test_agent_runs import agent_config, stage_inputs, work
from tests.support.services import NatsServer

pytestmark = pytest.mark.integration

# One training loop reporting each value three ways. Values carry 4 decimals, as
# scripts print them, so the float32 that TensorBoard stores reads back as the same
# number. The writer flushes halfway: those points are read while the run goes on,
# the rest once it has exited.
TRAIN_PY = """\
import os
import runyard
from torch.utils.tensorboard import SummaryWriter

writer = SummaryWriter(os.path.join(os.environ["RESULT_DIR"], "tb"))
for step in range(20):
    loss = round(2.0 / (step + 1), 4)
    acc = round(0.5 + step * 0.0237, 4)
    print(f"step {step} loss={loss} val_accuracy={acc}", flush=True)
    runyard.log(step=step, loss=loss, val_accuracy=acc)
    writer.add_scalar("loss", loss, step)
    writer.add_scalar("val_accuracy", acc, step)
    if step == 9:
        writer.flush()
writer.close()
"""

EXPECTED = sorted(
    [("loss", s, round(2.0 / (s + 1), 4)) for s in range(20)]
    + [("val_accuracy", s, round(0.5 + s * 0.0237, 4)) for s in range(20)]
)


def test_stdout_jsonl_and_tensorboard_deliver_identical_points(tmp_path: Path, nats_server: NatsServer) -> None:
    config = agent_config(tmp_path, nats_server)
    store = open_store(config.storage_root, None)
    code_uri, data_uri = stage_inputs(store, {"train.py": TRAIN_PY})
    assignment = work(
        "python train.py",
        code_uri=code_uri,
        data_uri=data_uri,
        results_uri="s3://results/sources",
        patterns=(r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+) val_accuracy=(?P<val_accuracy>[0-9.]+)",),
    )

    async def scenario() -> list[AgentReport]:
        async with running_agent(config) as agent:
            await agent.send_work(assignment)
            return await agent.until_terminal(assignment.run_id, timeout=90)

    reports = asyncio.run(scenario())
    assert transitions(reports) == ["staging", "started", "uploading", "completed"], texts(
        reports, LogStream.LOG_STREAM_STDERR
    )
    by_source: dict[str, list[tuple[str, int, float]]] = {}
    for p in metric_points(reports):
        by_source.setdefault(p.source, []).append((p.name, p.step, p.value))
    assert sorted(by_source) == ["jsonl", "stdout", "tensorboard"]
    for source, points in by_source.items():
        assert sorted(points) == EXPECTED, source
    # Nothing went wrong reading the event files.
    assert not [t for t in texts(reports, LogStream.LOG_STREAM_AGENT) if t.startswith("TensorBoard metrics:")]
