"""`runyard pause EXPERIMENT` and `runyard resume EXPERIMENT`: the experiment's new state, or JSON with -o json."""

from __future__ import annotations

import json

import pytest

from runyard.client import cli
from tests.unit.client.fake_server import FakeServer


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_pause_then_resume_print_the_experiment_state(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "pause", "exp-1")
    assert code == 0 and out.startswith("exp-1 paused (PAUSED): ")
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-1")
    assert code == 0 and "PAUSED" in out and "runyard resume exp-1" in out
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "-o", "json", "resume", "exp-1", "--reason", "go")
    assert code == 0 and json.loads(out)["state"] == "EXPERIMENT_STATE_ACTIVE"


def test_pause_names_what_is_wrong(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--endpoint", fake.endpoint, "pause", "exp-nope")
    assert (code, err) == (1, "error: NOT_FOUND: experiment exp-nope not found\n")
    code, _, err = run_cli(capsys, "--endpoint", fake.endpoint, "resume", "run-a")
    assert code == 1 and "take an experiment id" in err
