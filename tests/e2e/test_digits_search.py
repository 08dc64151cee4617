"""The PyTorch and TensorFlow digits searches on the real stack, judged by what they produce.

PostgreSQL, the machine's NATS, moto's S3 server and one agent with the
default framework mapping (its own Python offers pytorch, python and, since
tensorflow-cpu is installed beside it, tensorflow). Each example's own
`search.yaml` is submitted with max_runs cut to 6 to keep CI short. Checked:

* ASHA (the examples' early stopping) stops some runs early: they end
  STOPPED_EARLY with fewer epochs, and `runyard watch` shows the trials starting,
  the rung decisions and the new bests as they happen;
* the Keras runs report metrics only through the TensorBoard callback's event
  files (every point's source is ``tensorboard``; the manifest has no pattern);
* each leaderboard's best val_accuracy is above 0.9;
* `runyard best` downloads a model that loads in its framework and scores above
  0.9 on the held-out split (the validation split both scripts use).
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
import yaml

from tests.support.services import AWS_TEST_ENV, MotoS3
from tests.support.stack import Stack, cli

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MACHINE_NATS = os.environ.get("RUNYARD_TEST_NATS_URL", "nats://127.0.0.1:4222")
RUNS_PER_SEARCH = 6

SCORE_KERAS = """
import sys
sys.path.insert(0, sys.argv[1])
import keras, train
_, x_val, _, y_val = train.load_split(None)
print(train.accuracy(keras.models.load_model(sys.argv[2]), x_val, y_val))
"""

SCORE_TORCH = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch, train
result = Path(sys.argv[2])
hp = json.loads((result / "metrics.json").read_text())["hyperparameters"]
model = train.build_model(hp["hidden"], hp["dropout"])
model.load_state_dict(torch.load(result / "model.pt"))
_, x_val, _, y_val = train.load_split(None)
print(train.accuracy(model, torch.from_numpy(x_val), torch.from_numpy(y_val)))
"""


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"runyard {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def shortened(example: str, tmp_path: Path) -> Path:
    """The example's search.yaml with fewer runs, next to a copy of its code."""
    manifest = yaml.safe_load((EXAMPLES / example / "search.yaml").read_text())
    manifest["search"]["max_runs"] = RUNS_PER_SEARCH
    code = tmp_path / example
    code.mkdir()
    for name in ("train.py", "prepare_data.py"):
        (code / name).write_text((EXAMPLES / example / name).read_text())
    (code / "search.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return code / "search.yaml"


def score(script: str, example: str, model: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", script, str(EXAMPLES / example), str(model)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


def test_pytorch_and_tensorflow_searches_find_a_model_that_scores(tmp_path: Path, pg_url: str, moto_s3: MotoS3) -> None:
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
        agent_id = f"e2e-{uuid.uuid4().hex[:8]}"
        stack.start_agent(agent_id, 2)
        env = {
            **stack.env(),
            "RUNYARD_ENDPOINT": stack.endpoint,
            "RUNYARD_API_KEY": stack.admin_key,
            "RUNYARD_S3_ENDPOINT_URL": moto_s3.endpoint_url,
        }
        data = tmp_path / "digits.npz"
        subprocess.run([sys.executable, str(EXAMPLES / "digits-pytorch" / "prepare_data.py"), str(data)], check=True)
        run_cli("data", "upload", str(data), "s3://datasets/digits/digits.npz", env=env)
        searches = {
            example: json.loads(run_cli("submit", str(shortened(example, tmp_path)), "-o", "json", env=env).stdout)
            for example in ("digits-tensorflow", "digits-pytorch")
        }
        agents = json.loads(run_cli("admin", "agents", "-o", "json", env=env).stdout)
        offered = {f["name"] for a in agents if a["id"] == agent_id for f in a["frameworks"]}
        assert {"tensorflow", "pytorch"} <= offered
        watched = {
            example: run_cli("watch", experiment["id"], "--no-logs", env=env, timeout=900).stdout
            for example, experiment in searches.items()
        }

        for example, experiment in searches.items():
            shown = json.loads(run_cli("show", experiment["id"], "-o", "json", env=env).stdout)
            assert len(shown["runs"]) == RUNS_PER_SEARCH
            assert shown["state"] == "EXPERIMENT_STATE_COMPLETED", shown["state"]
            states = [run["state"] for run in shown["runs"]]
            assert "RUN_STATE_STOPPED_EARLY" in states, f"ASHA stopped no {example} run: {states}"
            assert set(states) <= {"RUN_STATE_COMPLETED", "RUN_STATE_STOPPED_EARLY"}, states
            for said in ("trial started", "stopped at rung", "new best", "search completed"):
                assert said in watched[example], f"`runyard watch` did not show {said!r}:\n{watched[example]}"
            board = shown["leaderboard"]
            assert board["metric"] == "val_accuracy" and board["runs"][0]["rank"] == 1
            assert board["runs"][0]["best"] > 0.9, board
            if example == "digits-tensorflow":
                for run in shown["runs"]:
                    points = json.loads(run_cli("metrics", run["id"], "-o", "json", env=env).stdout)["points"]
                    # Keras' callback only: epochs 0..14 (fewer when stopped early), read from the event files.
                    assert {p["source"] for p in points} == {"tensorboard"}
                    steps = sorted(p.get("step", 0) for p in points if p["name"] == "val_accuracy")
                    if run["state"] == "RUN_STATE_COMPLETED":
                        assert steps == list(range(15))
                    else:
                        assert steps == list(range(len(steps))) and len(steps) < 15, steps

            dest = tmp_path / f"best-{example}"
            best = json.loads(run_cli("best", experiment["id"], str(dest), "-o", "json", env=env).stdout)
            assert best["value"] > 0.9
            if example == "digits-tensorflow":
                accuracy = score(SCORE_KERAS, example, dest / "model.keras")
            else:
                accuracy = score(SCORE_TORCH, example, dest)
            assert accuracy > 0.9, (example, best)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
