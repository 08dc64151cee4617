"""`runyard validate` and `runyard schema manifest`: offline, every problem at once under its field path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from runyard.client import cli
from runyard.server.domain.manifest_limits import MAX_MANIFEST_BYTES
from runyard.server.domain.manifest_schema import manifest_schema

ROOT = Path(__file__).resolve().parents[3]
GOOD = ROOT / "examples" / "digits-pytorch" / "search.yaml"
BAD = """\
name: bad name
command: python train.py --lr ${lr} --depth ${depth}
results: ftp://results/x
resources: {gpus: two, cpus: 0}
hyperparameters:
  lr: {type: log, min: 0, max: 0.1}
search: {method: random}
colour: blue
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No server, no config: a broken config file must not stop an offline check either."""
    broken = tmp_path / "config.yaml"
    broken.write_text("endpoint: [", encoding="utf-8")
    monkeypatch.setenv("RUNYARD_CONFIG", str(broken))
    monkeypatch.setenv("RUNYARD_ENDPOINT", "127.0.0.1:1")


def test_every_problem_at_once_with_its_field_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    code, out, err = run_cli(capsys, "validate", str(bad))
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0] == f"{bad}: 8 problems"
    problems = {line.strip().split(":")[0] for line in lines[1:]}
    assert problems == {
        "name", "command", "results", "resources.gpus", "resources.cpus", "hyperparameters.lr.min",
        "search.max_runs", "colour",
    }  # fmt: skip
    assert '  resources.gpus: must be an integer, not a string ("two")' in lines
    assert "  command: unknown placeholder ${depth}: not a hyperparameter" in lines


def test_a_valid_manifest_is_ok_with_what_it_makes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", str(GOOD))
    assert code == 0
    assert out == f"{GOOD}: OK (digits-mlp-search: random search, 12 runs)\n"


def test_several_files_each_get_a_verdict_and_any_bad_one_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    code, out, _ = run_cli(capsys, "validate", str(GOOD), str(bad), str(tmp_path / "missing.yaml"))
    assert code == 1
    assert f"{GOOD}: OK (" in out
    assert f"{tmp_path / 'missing.yaml'}: 1 problem\n  manifest: cannot be read: No such file or directory" in out
    assert out.endswith("1 of 3 manifests valid\n")


def test_json_output_for_scripts_and_editors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    code, out, _ = run_cli(capsys, "validate", "-o", "json", str(bad), str(GOOD))
    assert code == 1
    verdicts = json.loads(out)
    assert [v["ok"] for v in verdicts] == [False, True]
    assert {"field": "resources.cpus", "message": "must be at least 1"} in verdicts[0]["problems"]
    code, out, _ = run_cli(capsys, "validate", "-o", "yaml", str(GOOD))
    assert code == 0 and yaml.safe_load(out)[0]["ok"] is True


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"name: x\n\xff\xfe\n", "manifest: is not UTF-8 text (byte 8 is 0xff)"),
        (b"", "manifest: is empty"),
        (b"name: [unclosed\n", "manifest: is not valid YAML at line 2"),
        (b"- a list\n", "manifest: must be a mapping of fields, not a list"),
        (b'name: x\ncommand: "a\\x00b"\nresults: s3://r/x\n', "command: must not contain the NUL character"),
        (b"#" * (MAX_MANIFEST_BYTES + 10), "manifest: is larger than 512 KiB"),
        (b"name: x\npriority: " + b"9" * 5000 + b"\n", "manifest: holds a number that cannot be read"),
        (b"name: x\ndescription: 0x" + b"f" * 4000 + b"\n", "description: must be a string, not a number\n"),
    ],
)
def test_hostile_files_get_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 1
    assert f"\n  {problem}" in out, out
    assert "Traceback" not in out + err


def test_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(GOOD.read_bytes()))
    monkeypatch.setattr("sys.stdin", stdin)
    code, out, _ = run_cli(capsys, "validate", "-")
    assert code == 0 and out.startswith("-: OK (")


def test_schema_manifest_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "schema", "manifest")
    assert code == 0
    assert json.loads(out) == manifest_schema()

