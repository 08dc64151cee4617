"""Which API key the SDK and CLI send: the argument, else RUNYARD_API_KEY, the config file, `runyard up`'s state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from runyard.client import Client
from runyard.client.cli import main
from runyard.config import UpState, load_settings, state_path, write_state
from tests.unit.client.fake_server import FakeServer


def sent(client: Client) -> str:
    """The fake server echoes the authorization metadata it received as the key id."""
    return client.whoami().key_id


def test_the_key_given_is_sent_on_every_call(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_API_KEY", "ry_from_env")
    with Client(fake.endpoint, api_key="ry_given") as client:
        assert sent(client) == "Bearer ry_given"
        client.get_experiment("exp-1")  # unary calls go through the same channel
    with Client(fake.endpoint, api_key="") as client:
        assert sent(client) == "", "an empty key sends nothing"


def test_without_a_key_the_client_takes_the_environment_then_the_config_file(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNYARD_API_KEY", raising=False)
    Path(os.environ["RUNYARD_CONFIG"]).write_text(yaml.safe_dump({"api_key": "ry_from_file"}))
    with Client(fake.endpoint) as client:
        assert sent(client) == "Bearer ry_from_file"
    monkeypatch.setenv("RUNYARD_API_KEY", "ry_from_env")
    with Client(fake.endpoint) as client:
        assert sent(client) == "Bearer ry_from_env"


def test_a_runyard_up_stack_gives_its_admin_key_to_clients_of_that_endpoint_only(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNYARD_API_KEY", raising=False)
    write_state(UpState(fake.endpoint, "file:///tmp/x", "/tmp/x", os.getpid(), api_key="ry_up_admin"))
    assert oct(state_path().stat().st_mode & 0o777) == "0o600", "the state file holds a key"
    with Client(fake.endpoint) as client:
        assert sent(client) == "Bearer ry_up_admin"
    assert load_settings({"endpoint": "elsewhere:1"}).api_key is None


def test_the_cli_flag_wins_and_whoami_prints_the_account(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNYARD_API_KEY", "ry_from_env")
    assert main(["--endpoint", fake.endpoint, "--api-key", "ry_flag", "whoami", "-o", "json"]) == 0
    out = capsys.readouterr().out
    assert '"key_id": "Bearer ry_flag"' in out and '"role": "admin"' in out
    assert main(["--endpoint", fake.endpoint, "whoami"]) == 0
    assert "account default, role admin (key Bearer ry_from_env)" in capsys.readouterr().out
