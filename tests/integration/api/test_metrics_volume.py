"""A run reporting 200,000 metric points on the real stack: it completes, and its history reads back whole or
downsampled (at most N per metric, with each metric's first, last, lowest and highest point)."""

from __future__ import annotations

import shlex
import time

import pytest

from runyard.client.sdk import Client
from runyard.v1 import common_pb2
from tests.integration.api.helpers import manifest
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

RS = common_pb2.RunState
LINES = 100_000  # two points a line
LOW_AT, HIGH_AT = 61_234, 87_654

# loss falls as 1/(step+1) except for a dip and a spike; acc climbs steadily.
SCRIPT = (
    "import sys\n"
    "w = sys.stdout.write\n"
    f"for i in range({LINES}):\n"
    f"    loss = -5.0 if i == {LOW_AT} else 50.0 if i == {HIGH_AT} else 1.0 / (i + 1)\n"
    "    w(f'step {i} loss={loss!r} acc={i / 100000!r}\\n')\n"
)
PATTERNS = """\
metrics:
  patterns:
    - 'step (?P<step>\\d+) loss=(?P<loss>[-0-9.e]+) acc=(?P<acc>[-0-9.e]+)'
"""


def loss_at(step: int) -> float:
    return -5.0 if step == LOW_AT else 50.0 if step == HIGH_AT else 1.0 / (step + 1)


def test_200000_points_complete_and_read_back_whole_or_downsampled(stack: Stack) -> None:
    stack.start_server()
    stack.start_agent("agent-1", 1)
    with Client(stack.endpoint, api_key=stack.admin_key, call_timeout_s=120) as client:
        experiment = client.create_experiment(
            manifest(f"python -c {shlex.quote(SCRIPT)}", name="volume", extra=PATTERNS)
        )
        run_id = experiment.runs[0].id
        deadline = time.monotonic() + 90
        while (run := client.get_run(run_id)).state not in (RS.RUN_STATE_COMPLETED, RS.RUN_STATE_FAILED):
            assert time.monotonic() < deadline, f"run still {RS.Name(run.state)}:\n{stack.logs()}"
            time.sleep(0.2)
        assert run.state == RS.RUN_STATE_COMPLETED, run.message

        whole = client.metric_history(run_id)
        assert dict(whole.point_counts) == {"loss": LINES, "acc": LINES}
        assert len(whole.points) == 2 * LINES
        loss = {p.step: p.value for p in whole.points if p.name == "loss"}
        assert len(loss) == LINES and all(loss[s] == loss_at(s) for s in (0, 1, LOW_AT, HIGH_AT, LINES - 1))
        assert {p.source for p in whole.points} == {"stdout"}
        # The run's latest values come from the same history.
        assert run.latest_metrics["acc"] == (LINES - 1) / 100000

        small = client.metric_history(run_id, max_points=1000)
        assert dict(small.point_counts) == {"loss": LINES, "acc": LINES}
        for name in ("loss", "acc"):
            steps = [p.step for p in small.points if p.name == name]
            assert 900 <= len(steps) <= 1000, name
            assert steps == sorted(steps) and {0, LINES - 1} <= set(steps)
        small_loss = {p.step: p.value for p in small.points if p.name == "loss"}
        assert small_loss[LOW_AT] == -5.0 and small_loss[HIGH_AT] == 50.0
        # Only asked-for metrics, downsampled the same way.
        only = client.metric_history(run_id, ["acc"], max_points=10)
        assert {p.name for p in only.points} == {"acc"} and len(only.points) <= 10
        assert dict(only.point_counts) == {"acc": LINES}
