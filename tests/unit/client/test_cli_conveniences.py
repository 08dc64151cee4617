"""What a newcomer (and a kubectl or det user) expects of the command line.

-o yaml beside -o json, ids-only output for scripts, a live runs table, `logs` of a whole
experiment, `list --watch`, "not found" for a malformed id, each metric value shown once in
`watch`, shell completion, and several clusters by name in the config file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runyard.client import cli, commands
from runyard.config import ConfigError, load_settings
from runyard.v1 import common_pb2, watch_pb2
from tests.unit.client.fake_server import FakeServer


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- -o yaml ------------------------------------------------------------------------------------


def test_yaml_output_is_the_json_document_as_yaml(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    _, as_json, _ = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-1", "-o", "json")
    code, as_yaml, _ = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-1", "-o", "yaml")
    assert code == 0
    assert yaml.safe_load(as_yaml) == json.loads(as_json)
    assert not as_yaml.lstrip().startswith("{")


def test_a_yaml_stream_is_one_document_per_update(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "run-a", "-o", "yaml")
    assert code == 0
    updates = list(yaml.safe_load_all(out))
    assert [u["cursor"] for u in updates] == ["p1", "p2", "p3", "p4", "p5", "p6"]


# -- watch: each metric once ---------------------------------------------------------------------


def _metric_update(fake: FakeServer, source: str) -> None:
    update = watch_pb2.RunUpdate(cursor="p5", run_id="run-a")
    update.metrics.points.add(name="val_accuracy", step=1, value=0.93, source=source)
    fake.state.updates[4] = update
    fake.state.updates[3].logs.lines[0].text = "epoch 1 val_accuracy=0.93"


def test_watch_shows_a_metric_printed_by_the_run_once(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    _metric_update(fake, "stdout")
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "run-a")
    assert code == 0
    assert out.count("val_accuracy=0.93") == 1, out
    assert "| epoch 1 val_accuracy=0.93" in out


def test_watch_without_logs_still_shows_every_metric(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    _metric_update(fake, "stdout")
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "run-a", "--no-logs")
    assert code == 0
    assert out.count("val_accuracy=0.93") == 1 and "step 1: val_accuracy=0.93" in out, out


def test_watch_shows_metrics_that_no_printed_line_carried(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    _metric_update(fake, "jsonl")  # from runyard.log(...): the printed line does not count it
    fake.state.updates[3].logs.lines[0].text = "training..."
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "run-a")
    assert code == 0
    assert "step 1: val_accuracy=0.93" in out, out


# -- watch --table ----------------------------------------------------------------------------------


def test_watch_table_shows_each_run_with_state_step_and_latest_metric(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "exp-1", "--table")
    assert code == 0  # the stream's only run completed
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("run-")}
    assert rows["run-a"][1:4] == ["COMPLETED", "1", "0.93"], out
    assert rows["run-b"][1] == "FAILED"  # as the server knew it when the watch began
    assert "STEP" in out and "val_accuracy" in out
    assert "| epoch" not in out  # the table, not the line stream


# -- ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["show", "nope"], ["watch", "42"], ["logs", "exp1"], ["cancel", "x"]])
def test_a_malformed_id_is_not_found_with_a_hint(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run_cli(capsys, "--endpoint", "127.0.0.1:1", *argv)
    assert (code, out) == (1, "")
    assert f"'{argv[1]}' not found" in err and "exp-" in err and "run-" in err, err


def test_metrics_of_a_malformed_run_id_is_not_found(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--endpoint", "127.0.0.1:1", "metrics", "exp-1")
    assert code == 1 and "run 'exp-1' not found: run ids look like run-" in err


def test_quiet_prints_only_ids(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "list", "runs", "--experiment", "exp-1", "-q")
    assert code == 0 and out.split() == ["run-a", "run-b"]
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "list", "-q")
    assert out.split() == ["exp-1"]


# -- logs of an experiment -------------------------------------------------------------------------------


def test_logs_of_an_experiment_prints_every_runs_lines_after_its_id(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "logs", "exp-1", "--tail", "2")
    assert code == 0
    assert out.splitlines() == ["run-a line 3", "run-a line 4", "run-b line 3", "run-b line 4"]


def test_logs_follow_of_an_experiment_follows_its_runs(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "logs", "exp-1", "-f")
    assert code == 0
    assert out.splitlines() == ["run-a epoch 1 [ok]"]


def test_logs_of_an_experiment_as_json_names_each_lines_run(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "logs", "exp-1", "-o", "json")
    lines = json.loads(out)
    assert code == 0 and {line["run_id"] for line in lines} == {"run-a", "run-b"} and len(lines) == 10


# -- list --watch ----------------------------------------------------------------------------------------------


def test_list_watch_redraws_until_interrupted(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    looks: list[float] = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 3:
            raise KeyboardInterrupt
        if len(looks) == 2:  # the list changes between two looks
            fake.state.runs["run-b"].state = common_pb2.RUN_STATE_CANCELED

    monkeypatch.setattr(commands, "_pause", sleep)
    code, out, _ = run_cli(
        capsys, "--endpoint", fake.endpoint, "list", "runs", "--watch", "--interval", "0.5", "-o", "json"
    )
    assert code == 0 and looks == [0.5, 0.5, 0.5]
    documents = [json.loads(line) for line in out.splitlines()]
    # One document per change: the first look, then the look after run-b changed.
    assert [[r["state"] for r in d] for d in documents] == [
        ["RUN_STATE_COMPLETED", "RUN_STATE_FAILED"],
        ["RUN_STATE_COMPLETED", "RUN_STATE_CANCELED"],
    ]


def test_list_watch_table_ends_cleanly_on_ctrl_c(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "_pause", sleep)
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "list", "--watch")
    assert code == 0 and "exp-1" in out


# -- shell completion -------------------------------------------------------------------------------------------


def test_completion_prints_shell_code_for_runyard(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "completion", "bash")
    assert code == 0 and "runyard" in out and "complete " in out


def complete(tmp_path: Path, line: str) -> list[str]:
    """What the shell offers for `line` (Tab at its end), asked the way argcomplete's shell hook asks."""
    answer = tmp_path / "answer"
    env = {
        **os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line, "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
    }  # fmt: skip
    answer.write_text("")
    subprocess.run([sys.executable, "-m", "runyard.client.cli"], env=env, timeout=60, check=False)
    return answer.read_text().split()


def test_the_shell_gets_commands_and_flags_completed(tmp_path: Path) -> None:
    assert complete(tmp_path, "runyard wat") == ["watch"]
    assert complete(tmp_path, "runyard watch exp-1 --ta") == ["--table"]


def test_the_shell_gets_ids_from_the_server(fake: FakeServer, tmp_path: Path) -> None:
    assert complete(tmp_path, f"runyard --endpoint {fake.endpoint} show ex") == ["exp-1"]
    assert complete(tmp_path, f"runyard --endpoint {fake.endpoint} metrics run-") == ["run-a", "run-b"]
    # No server: no answer, and no traceback in the shell.
    assert complete(tmp_path, "runyard --endpoint 127.0.0.1:1 show ex") == []


# -- contexts --------------------------------------------------------------------------------------------------------

CONTEXTS = """\
api_key: ry_shared
current_context: lab
contexts:
  lab: {endpoint: "lab.example:50051", api_key: ry_lab}
  laptop: {endpoint: "127.0.0.1:7000"}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config.yaml").write_text(CONTEXTS)
    return {
        "HOME": str(tmp_path / "home"),
        "RUNYARD_CONFIG": str(tmp_path / "config.yaml"),
        "RUNYARD_STATE_DIR": str(tmp_path / "state"),
    }


def test_the_current_context_of_the_config_file_is_used(env: dict[str, str]) -> None:
    settings = load_settings(environ=env)
    assert (settings.context, settings.endpoint, settings.api_key) == ("lab", "lab.example:50051", "ry_lab")
    assert "(context lab)" in settings.source("endpoint")
    assert settings.source("context").endswith("(current_context)")
    assert load_settings(environ=env, context="lab").source("context") == "flag"


def test_a_context_is_chosen_by_flag_or_environment(env: dict[str, str]) -> None:
    by_flag = load_settings(environ=env, context="laptop")
    # The context's keys win; keys it does not set come from the top of the file.
    assert (by_flag.context, by_flag.endpoint, by_flag.api_key) == ("laptop", "127.0.0.1:7000", "ry_shared")
    by_env = load_settings(environ={**env, "RUNYARD_CONTEXT": "laptop"})
    assert by_env.endpoint == "127.0.0.1:7000"
    # The flag wins over the environment, and a flag for a setting over any context.
    assert load_settings(environ={**env, "RUNYARD_CONTEXT": "laptop"}, context="lab").endpoint == "lab.example:50051"
    assert load_settings({"endpoint": "h:1"}, environ=env, context="lab").endpoint == "h:1"


def test_an_unknown_context_is_an_error_naming_the_known_ones(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"no context 'prod' under contexts: \(defined: lab, laptop\)"):
        load_settings(environ=env, context="prod")


def test_the_context_flag_reaches_the_settings(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["--context", "laptop", "list"])
    assert cli.settings_from_args(args, environ=env).endpoint == "127.0.0.1:7000"
    args = cli.build_parser().parse_args(["config", "--context", "nope"])
    with pytest.raises(ConfigError):
        cli.settings_from_args(args, environ=env)
