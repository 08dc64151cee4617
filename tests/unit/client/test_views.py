"""Experiment views: the leaderboard's order, `compare`, `best`, the terminal plot and the TensorBoard export.

The CLI runs against the in-process fake API (tests/unit/client/fake_server.py),
with results in a file:// store; the export is read back with the agent's own
TensorBoard reader, so what `runyard export tensorboard` writes is exactly what
a training script's event files would have reported.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from runyard.agent.tensorboard import TensorBoardTail, widen_float32
from runyard.client import cli, plots, tb_export, views
from runyard.v1 import common_pb2, resources_pb2
from tests.unit.client.conftest import sample_run
from tests.unit.client.fake_server import FakeServer

RS = common_pb2.RunState


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def scored(run_id: str, index: int, best: float | None, step: int = 0) -> resources_pb2.Run:
    run = resources_pb2.Run(id=run_id, index=index)
    if best is not None:
        run.best_metric, run.best_step = best, step
    return run


# -- the leaderboard's order ---------------------------------------------------------------


def test_ranked_puts_the_best_first_ties_to_the_earlier_step_then_the_lower_index() -> None:
    runs = [
        scored("run-late", 0, 0.95, step=9),
        scored("run-none", 1, None),
        scored("run-low", 2, 0.80, step=1),
        scored("run-early", 3, 0.95, step=4),
        scored("run-twin", 4, 0.95, step=4),
    ]
    order = [r.id for r in views.ranked(runs, views.Objective("val_accuracy", "maximize"))]
    assert order == ["run-early", "run-twin", "run-late", "run-low", "run-none"]


def test_ranked_for_a_minimized_metric_puts_the_lowest_first_and_zero_counts_as_a_value() -> None:
    runs = [scored("run-a", 0, 0.3), scored("run-zero", 1, 0.0), scored("run-none", 2, None)]
    order = [r.id for r in views.ranked(runs, views.Objective("val_loss", "minimize"))]
    assert order == ["run-zero", "run-a", "run-none"]


def test_gpu_time_reads_short() -> None:
    assert [views.fmt_gpu_time(s) for s in (0, 4.25, 42, 192, 7500)] == ["-", "4.2s", "42s", "3m12s", "2h05m"]


# -- show / compare / best through the CLI ----------------------------------------------------


def test_show_json_carries_the_leaderboard(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.experiments["exp-1"].runs[1].gpu_seconds = 12.5
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-1", "-o", "json")
    assert code == 0
    board = json.loads(out)["leaderboard"]
    assert (board["metric"], board["goal"]) == ("val_accuracy", "maximize")
    first, second = board["runs"]
    assert first == {
        "rank": 1, "run_id": "run-a", "index": 0, "state": "RUN_STATE_COMPLETED", "best": 0.93, "step": 2,
        "latest": 0.93, "hyperparameters": {"lr": 0.01}, "gpu_seconds": 0.0,
    }  # fmt: skip
    # A run that never reported the metric is listed, unranked, after the ranked ones.
    assert (second["run_id"], second["rank"], second["best"], second["gpu_seconds"]) == ("run-b", None, None, 12.5)


def test_show_table_is_the_leaderboard(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-1")
    assert code == 0
    header = next(line for line in out.splitlines() if "RUN" in line and "STATE" in line)
    for column in ("BEST val_accuracy (max)", "AT STEP", "HYPERPARAMETERS", "GPU TIME"):
        assert column in header
    assert out.index("run-a") < out.index("run-b")


def add_run(fake: FakeServer, run: resources_pb2.Run) -> None:
    fake.state.runs[run.id] = run
    fake.state.experiments["exp-1"].runs.append(run)


def test_compare_lists_runs_side_by_side(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "compare", "run-a", "run-b", "-o", "json")
    assert code == 0
    a, b = json.loads(out)["runs"]
    assert a["run_id"] == "run-a" and a["hyperparameters"] == {"lr": 0.01}
    assert a["best"] == {"value": 0.93, "step": 2} and a["final"] == {"val_accuracy": 0.93}
    assert (a["metric"], a["goal"], a["state"]) == ("val_accuracy", "maximize", "RUN_STATE_COMPLETED")
    assert b["best"] is None and b["final"] == {} and b["state"] == "RUN_STATE_FAILED"

    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "compare", "run-a", "run-b")
    assert code == 0
    lines = out.splitlines()
    assert "run-a" in lines[0] and "run-b" in lines[0]
    assert any(line.split()[:3] == ["lr", "0.01", "0.1"] for line in lines)
    assert any(line.startswith("best val_accuracy") and "0.93 @2" in line for line in lines)


def test_compare_refuses_an_experiment_id(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--endpoint", "127.0.0.1:1", "compare", "exp-1")
    assert code == 1 and "not a run id" in err


def store_results(root: Path, run_id: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / "results" / "digits" / run_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_best_downloads_the_best_run_that_has_results(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    # run-c scores higher but is still running (no results yet): the next best is taken, and said so.
    running = sample_run("run-c", 2, RS.RUN_STATE_RUNNING, 0.003, 0.97)
    add_run(fake, running)
    store_results(objects, "run-a", {"model.pt": b"weights-a", "metrics.json": b"{}"})
    dest = tmp_path / "best"
    code, out, err = run_cli(
        capsys,
        "--endpoint",
        fake.endpoint,
        "best",
        "exp-1",
        str(dest),
        "--storage-root",
        objects.as_uri(),
        "-o",
        "json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["run_id"], doc["value"], doc["step"], doc["skipped"]) == ("run-a", 0.93, 2, ["run-c"])
    assert (doc["files"], doc["bytes"]) == (2, len(b"weights-a") + 2)
    assert (dest / "model.pt").read_bytes() == b"weights-a"
    assert "run-c" in err and "no results stored" in err

    store_results(objects, "run-c", {"model.pt": b"weights-c"})
    code, out, _ = run_cli(
        capsys, "--endpoint", fake.endpoint, "best", "exp-1", str(tmp_path / "c"), "--storage-root", objects.as_uri()
    )
    assert code == 0
    assert "best run run-c: val_accuracy=0.97 at step 2 (lr=0.003)" in out
    assert (tmp_path / "c" / "model.pt").read_bytes() == b"weights-c"


def test_best_fails_in_one_line_when_no_run_has_results(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "objects" / "results").mkdir(parents=True)  # the bucket, empty
    code, _, err = run_cli(
        capsys, "--endpoint", fake.endpoint, "best", "exp-1", "--storage-root", (tmp_path / "objects").as_uri()
    )
    assert code == 1
    assert err.splitlines()[-1].startswith("error: none of the 1 scored runs of exp-1 has results stored")


# -- the terminal plot ----------------------------------------------------------------------


def test_metrics_plot_draws_one_panel_per_metric(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "metrics", "run-a", "--plot")
    assert code == 0
    assert "val_accuracy" in out and "train_loss" in out
    assert "\x1b[" not in out  # no colour codes into a pipe


def test_render_draws_long_histories_quickly_and_single_points_too() -> None:
    points = [common_pb2.MetricPoint(name="loss", step=s, value=1.0 / (1 + s)) for s in range(200_000)]
    points.append(common_pb2.MetricPoint(name="lr", step=0, value=0.01))
    started = time.monotonic()
    text = plots.render(plots.curves_of_run(points), width=100)
    assert time.monotonic() - started < 10
    lines = text.splitlines()
    assert any("loss" in line for line in lines) and any("lr" in line for line in lines)
    assert max(len(line) for line in lines) <= 100
    assert any(ch in text for ch in "⠁⠂⠄⡀⢀⣀⠉")  # braille dots: the curve itself


def test_a_step_reported_twice_keeps_its_latest_value() -> None:
    points = [
        common_pb2.MetricPoint(name="loss", step=1, value=0.9, time_us=10),
        common_pb2.MetricPoint(name="loss", step=1, value=0.7, time_us=20),  # a retried attempt
        common_pb2.MetricPoint(name="loss", step=2, value=0.5, time_us=30),
    ]
    assert plots.curves_of_run(points) == {"loss": {"loss": [(1, 0.7), (2, 0.5)]}}


def test_thin_keeps_the_last_point() -> None:
    curve = [(s, float(s)) for s in range(1001)]
    thinned = plots.thin(curve, 100)
    assert len(thinned) <= 101 and thinned[0] == (0, 0.0) and thinned[-1] == (1000, 1000.0)


# -- the TensorBoard export -----------------------------------------------------------------


def export_sample() -> tuple[resources_pb2.Run, list[common_pb2.MetricPoint]]:
    run = resources_pb2.Run(id="run-3f9c", index=0)
    run.hyperparameters["lr"].CopyFrom(struct_pb2.Value(number_value=0.003))
    run.hyperparameters["hidden"].CopyFrom(struct_pb2.Value(number_value=128))
    run.hyperparameters["opt"].CopyFrom(struct_pb2.Value(string_value="adam/w"))
    start = 1_795_752_815_902_948
    points = []
    for step in range(1, 51):
        at = start + step * 1_234_567
        # Values as the stdout source stores them (printed with %.4f), and a tag with a slash.
        points.append(common_pb2.MetricPoint(name="train_loss", step=step, value=round(2 / step, 4), time_us=at))
        points.append(common_pb2.MetricPoint(name="val_accuracy", step=step, value=round(1 - 1 / step, 4), time_us=at))
        points.append(common_pb2.MetricPoint(name="loss/val", step=step, value=round(0.5 / step, 4), time_us=at + 7))
    points.append(common_pb2.MetricPoint(name="ratio", step=99, value=1 / 3, time_us=start))
    return run, points


def test_export_reads_back_as_the_same_points_through_the_agents_reader(tmp_path: Path) -> None:
    run, points = export_sample()
    folder = tb_export.export_run(tmp_path, run, points, views.hyperparameters(run))
    assert folder.name == "run-3f9c_hidden=128,lr=0.003,opt=adam_w"
    read = TensorBoardTail(tmp_path).drain()
    assert [(p.name, p.step, p.time_us) for p in read] == [(p.name, p.step, p.time_us) for p in points]
    # Values of up to 7 significant digits come back exactly; others as the nearest float32 does.
    assert [p.value for p in read[:-1]] == [p.value for p in points[:-1]]
    assert read[-1].value == widen_float32(1 / 3) == 0.33333334
    assert {p.source for p in read} == {"tensorboard"}


def test_exporting_again_replaces_the_runs_file(tmp_path: Path) -> None:
    run, points = export_sample()
    tb_export.export_run(tmp_path, run, points, {})
    folder = tb_export.export_run(tmp_path, run, points[:3], {})
    assert [p.name for p in folder.iterdir()] == [tb_export.EVENT_FILE]
    assert len(TensorBoardTail(tmp_path).drain()) == 3


def test_export_command_writes_a_folder_per_run(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "tb"
    code, out, _ = run_cli(
        capsys, "--endpoint", fake.endpoint, "export", "tensorboard", "exp-1", str(target), "-o", "json"
    )
    assert code == 0
    doc = json.loads(out)
    assert [(r["run_id"], r["points"]) for r in doc["runs"]] == [("run-a", 3), ("run-b", 3)]
    assert sorted(p.name for p in target.iterdir()) == ["run-a_lr=0.01", "run-b_lr=0.1"]
    read = TensorBoardTail(target / "run-a_lr=0.01").drain()
    assert [(p.name, p.step, p.value) for p in read] == [(p.name, p.step, p.value) for p in fake.state.points]
