"""`runyard metrics`: downsampled views by default, every point for scripts (-o json) unless asked."""

from __future__ import annotations

import json

import pytest

from runyard.client import cli, commands
from tests.unit.client.fake_server import FakeServer


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def asked(fake: FakeServer) -> list[int]:
    return [r.max_points for r in fake.state.metrics_requests]


def test_json_returns_every_point_and_the_counts_unless_max_points_is_given(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "metrics", "run-a", "-o", "json")
    doc = json.loads(out)
    assert code == 0 and len(doc["points"]) == 3
    assert doc["point_counts"] == {"train_loss": 1, "val_accuracy": 2}

    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "metrics", "run-a", "-o", "json", "--max-points", "1")
    doc = json.loads(out)
    assert code == 0
    assert [(p["name"], p["step"]) for p in doc["points"]] == [("val_accuracy", 2), ("train_loss", 2)]
    assert doc["point_counts"] == {"train_loss": 1, "val_accuracy": 2}
    assert asked(fake) == [0, 1]


def test_tables_ask_for_a_bounded_history_and_count_every_point(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--endpoint", fake.endpoint, "metrics", "run-a")
    assert code == 0 and err == ""
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["val_accuracy"] == ["val_accuracy", "2", "0.93", "2"]

    code, out, err = run_cli(capsys, "--endpoint", fake.endpoint, "metrics", "run-a", "--all", "--max-points", "1")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["2"]  # step 1 was left out
    assert "at most 1 points per metric shown" in err
    # The latest view still says val_accuracy has 2 points although 1 came back.
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "metrics", "run-a", "--max-points", "1")
    assert {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:]}["val_accuracy"] == "2"
    assert asked(fake) == [commands.METRICS_VIEW_MAX_POINTS, 1, 1]


def test_a_negative_max_points_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["metrics", "run-a", "--max-points", "-3"])
    assert exit_info.value.code == 2
    assert "--max-points" in capsys.readouterr().err
