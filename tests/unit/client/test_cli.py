"""The `runyard` command line: argument shapes, JSON output, exit statuses, one-line errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from runyard.client import cli, daemons
from runyard.v1 import common_pb2
from tests.unit.client.conftest import status
from tests.unit.client.fake_server import FakeServer

RS = common_pb2.RunState


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- argument parsing -----------------------------------------------------------------------


def test_output_flag_goes_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["-o", "json", "list"]).output == "json"
    assert parser.parse_args(["list", "-o", "json"]).output == "json"
    assert parser.parse_args(["--endpoint", "h:1", "show", "exp-1"]).endpoint == "h:1"
    assert parser.parse_args(["show", "exp-1", "--endpoint", "h:2"]).endpoint == "h:2"
    assert not hasattr(parser.parse_args(["list"]), "output")


def test_submit_arguments() -> None:
    args = cli.build_parser().parse_args(["submit", "m.yaml", "code", "--request-id", "r1", "--watch"])
    assert (args.manifest, args.code_dir, args.request_id, args.watch) == ("m.yaml", "code", "r1", True)
    args = cli.build_parser().parse_args(["submit", "m.yaml"])
    assert args.code_dir is None and args.request_id is None


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["submit"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        cli.main(["list", "-o", "xml"])
    assert caught.value.code == 2


def test_server_flags_fill_server_config(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        [
            "server", "--listen", "0.0.0.0:7000", "--database-url", "sqlite:///x.db", "--nats-url", "nats://n:1",
            "--storage-root", "file:///s", "--s3-endpoint-url", "http://m:9000", "--code-uri-prefix", "s3://c/p",
            "--max-code-bytes", "5MiB", "--agent-timeout", "9", "--shutdown-grace", "2",
        ]
    )  # fmt: skip
    kwargs = daemons.server_config_kwargs(cli.settings_from_args(args), args)
    assert kwargs == {
        "listen": "0.0.0.0:7000",
        "database_url": "sqlite:///x.db",
        "nats_url": "nats://n:1",
        "storage_root": "file:///s",
        "s3_endpoint_url": "http://m:9000",
        "code_uri_prefix": "s3://c/p",
        "max_code_bytes": 5 * 1024 * 1024,
        "agent_timeout_s": 9.0,
        "shutdown_grace_s": 2.0,
    }


def test_server_settings_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/runyard")
    args = cli.build_parser().parse_args(["server"])
    kwargs = daemons.server_config_kwargs(cli.settings_from_args(args), args)
    assert kwargs == {"database_url": "postgresql+psycopg://root@127.0.0.1/runyard"}


def test_agent_flags_fill_agent_config() -> None:
    args = cli.build_parser().parse_args(
        [
            "agent", "--agent-id", "gpu-7", "--slots", "4", "--work-dir", "/w", "--nats-url", "nats://n:1",
            "--framework", "pytorch=/opt/py/bin/python", "--framework", "tensorflow=/opt/tf/bin/python",
            "--label", "zone=a",
        ]
    )  # fmt: skip
    kwargs = daemons.agent_config_kwargs(cli.settings_from_args(args), args)
    assert kwargs == {
        "agent_id": "gpu-7",
        "nats_url": "nats://n:1",
        "slots": 4,
        "work_dir": "/w",
        "frameworks": {"pytorch": "/opt/py/bin/python", "tensorflow": "/opt/tf/bin/python"},
        "labels": {"zone": "a"},
    }


def test_default_agent_id_is_a_safe_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "GPU_Node.07.example")
    assert daemons.default_agent_id() == "gpu-node-07-example"


def test_bad_framework_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["agent", "--framework", "pytorch"])
    assert caught.value.code == 2


def test_bad_environment_value_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_MAX_CODE_BYTES", "huge")
    code, _, err = run_cli(capsys, "config")
    assert code == 2
    assert err.startswith("error: RUNYARD_MAX_CODE_BYTES: ")


def test_an_id_of_neither_kind_fails_without_contacting_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--endpoint", "127.0.0.1:1", "show", "banana")
    assert (code, out) == (1, "")
    assert err.startswith("error: 'banana' not found: experiment ids look like exp-")
    assert "run ids like run-" in err and "`runyard list`" in err


# -- JSON output ----------------------------------------------------------------------------


def test_show_experiment_json_has_runs_states_and_latest_metrics(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-1", "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["id"] == "exp-1"
    assert doc["state"] == "EXPERIMENT_STATE_FAILED"
    assert doc["runs_by_state"] == {"RUN_STATE_COMPLETED": 1, "RUN_STATE_FAILED": 1}
    first, second = doc["runs"]
    assert first["state"] == "RUN_STATE_COMPLETED"
    assert first["latest_metrics"] == {"val_accuracy": 0.93}
    assert first["hyperparameters"] == {"lr": 0.01}
    # Fields at their zero value are present too, so scripts can index them.
    assert second["latest_metrics"] == {} and second["exit_code"] == 0 and second["message"] == ""


def test_list_json_is_an_array(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "-o", "json", "--endpoint", fake.endpoint, "list")
    assert code == 0
    assert [e["id"] for e in json.loads(out)] == ["exp-1"]
    code, out, _ = run_cli(capsys, "-o", "json", "--endpoint", fake.endpoint, "list", "runs", "--state", "failed")
    assert [r["id"] for r in json.loads(out)] == ["run-b"]


def test_metrics_json_has_latest_values_and_points(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "metrics", "run-a", "-o", "json")
    doc = json.loads(out)
    assert code == 0
    assert doc["latest"] == {"train_loss": {"step": 2, "value": 0.25}, "val_accuracy": {"step": 2, "value": 0.93}}
    assert doc["points"][0] == {"name": "val_accuracy", "step": 1, "value": 0.9, "time_us": 0, "source": "stdout"}


def test_watch_json_prints_one_update_per_line(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "run-a", "-o", "json")
    assert code == 0
    updates = [json.loads(line) for line in out.splitlines()]
    assert [u["cursor"] for u in updates] == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert updates[-1]["status"]["state"] == "RUN_STATE_COMPLETED" and updates[-1]["status"]["final"] is True


# -- people's output and exit statuses --------------------------------------------------------


def test_watch_prints_status_logs_and_metrics_and_exits_0_on_completion(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "run-a")
    assert code == 0
    assert "RUNNING" in out and "COMPLETED" in out
    assert "| epoch 1 [ok]" in out  # run output is printed as is, brackets and all
    # The point was parsed from a printed line, shown as that line: not printed a second time.
    assert "step 1: val_accuracy=0.93" not in out
    assert "run run-a COMPLETED" in err


def test_watch_exits_1_when_the_run_failed(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.updates[-1] = status(
        6, RS.RUN_STATE_FAILED, final=True, attempt=1, failure_reason=common_pb2.FAILURE_REASON_USER_CODE,
        exit_code=3,
    )  # fmt: skip
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "watch", "run-a")
    assert code == 1
    assert "FAILED attempt 1 user code exit code 3" in out


def test_show_experiment_table_lists_runs_with_metric_and_best(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-1")
    assert code == 0
    assert "val_accuracy" in out and "run-a" in out and "run-b" in out and "lr=0.01" in out
    assert "best: run-a val_accuracy=0.93 at step 2 (lr=0.01)" in out


def test_submit_prints_the_experiment_id_as_json(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "manifest.yaml").write_text("name: digits-mlp\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    code, out, _ = run_cli(
        capsys, "--endpoint", fake.endpoint, "submit", str(tmp_path / "manifest.yaml"), "-o", "json",
        "--request-id", "again-1",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["id"] == "exp-1"
    assert fake.state.create_requests[-1].client_request_id == "again-1"
    assert fake.state.create_requests[-1].code_uri == "s3://runyard/code/abc.tar.gz"


def test_submit_refuses_code_over_the_servers_limit_before_uploading(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake.state.max_code_bytes = 1024
    (tmp_path / "manifest.yaml").write_text("name: x\n")
    (tmp_path / "data.bin").write_bytes(b"\0" * 4096)
    code, _, err = run_cli(capsys, "--endpoint", fake.endpoint, "submit", str(tmp_path / "manifest.yaml"))
    assert code == 1
    assert err.count("\n") == 1
    assert "over the server's limit of" in err and "(set by --max-code-bytes)" in err
    assert fake.state.upload_chunks == [] and fake.state.create_requests == []


def test_api_errors_are_one_line(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--endpoint", fake.endpoint, "show", "exp-nope")
    assert (code, out, err) == (1, "", "error: NOT_FOUND: experiment exp-nope not found\n")
    code, _, err = run_cli(capsys, "--endpoint", fake.endpoint, "cancel", "run-a")
    assert code == 1
    assert err == "error: FAILED_PRECONDITION: run run-a is RUN_STATE_COMPLETED and cannot be canceled\n"


def test_logs_print_every_stored_line_or_the_tail(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "logs", "run-a")
    assert (code, out.splitlines()) == (0, [f"line {i}" for i in range(5)])
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "logs", "run-a", "--tail", "2")
    assert out.splitlines() == ["line 3", "line 4"]
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "logs", "run-a", "-f")
    assert (code, out.splitlines()) == (0, ["epoch 1 [ok]"])


def test_admin_commands(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "admin", "rebuild")
    assert (code, out.strip()) == (0, "rebuilt the read models: 42 events replayed in 0.50 s")
    code, out, _ = run_cli(capsys, "--endpoint", fake.endpoint, "admin", "agents", "-o", "json")
    assert [a["id"] for a in json.loads(out)] == ["agent-1"]


def test_down_without_a_stack_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "down")
    assert code == 0 and out.startswith("Runyard is not up")


def test_up_refuses_a_port_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(capsys, "up", "--data-dir", str(tmp_path / "d"), "--port", str(port))
    assert code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert not (tmp_path / "d").exists()
