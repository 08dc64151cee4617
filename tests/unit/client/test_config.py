"""Where settings come from: flags > RUNYARD_* > config file > `runyard up` state file > defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runyard.config import (
    DEFAULT_ENDPOINT,
    ConfigError,
    UpState,
    config_path,
    load_settings,
    parse_size,
    read_state,
    remove_state,
    state_path,
    write_state,
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment that points every file at the test's folder."""
    return {
        "HOME": str(tmp_path / "home"),
        "RUNYARD_CONFIG": str(tmp_path / "config.yaml"),
        "RUNYARD_STATE_DIR": str(tmp_path / "state"),
    }


def write_config(env: dict[str, str], text: str) -> None:
    Path(env["RUNYARD_CONFIG"]).write_text(text)


def up_state(env: dict[str, str], endpoint: str = "127.0.0.1:6000", pid: int | None = None) -> UpState:
    state = UpState(
        endpoint=endpoint,
        storage_root="file:///data/objects",
        data_dir="/data",
        pid=os.getpid() if pid is None else pid,
    )
    write_state(state, env)
    return state


def test_default_endpoint_when_nothing_is_set(env: dict[str, str]) -> None:
    settings = load_settings({}, environ=env)
    assert settings.endpoint == DEFAULT_ENDPOINT == "127.0.0.1:50051"
    assert settings.source("endpoint") == "default"
    assert settings.storage_root is None


def test_each_layer_overrides_the_ones_below(env: dict[str, str]) -> None:
    up_state(env, endpoint="127.0.0.1:4000")
    assert load_settings({}, environ=env).endpoint == "127.0.0.1:4000"

    write_config(env, "endpoint: 127.0.0.1:3000\n")
    assert load_settings({}, environ=env).endpoint == "127.0.0.1:3000"

    env["RUNYARD_ENDPOINT"] = "127.0.0.1:2000"
    assert load_settings({}, environ=env).endpoint == "127.0.0.1:2000"

    settings = load_settings({"endpoint": "127.0.0.1:1000"}, environ=env)
    assert settings.endpoint == "127.0.0.1:1000"
    assert settings.source("endpoint") == "flag"


def test_precedence_is_per_key(env: dict[str, str]) -> None:
    write_config(env, "s3_endpoint_url: http://minio:9000\nnats_url: nats://file:4222\n")
    env["RUNYARD_NATS_URL"] = "nats://env:4222"
    settings = load_settings({"database_url": "sqlite:///flag.db", "nats_url": None}, environ=env)
    assert settings.database_url == "sqlite:///flag.db"
    assert settings.nats_url == "nats://env:4222"
    assert settings.source("nats_url") == "env RUNYARD_NATS_URL"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.source("s3_endpoint_url").startswith("config file ")


def test_state_file_supplies_endpoint_and_storage_of_the_local_stack(env: dict[str, str]) -> None:
    up_state(env)
    settings = load_settings({}, environ=env)
    assert settings.endpoint == "127.0.0.1:6000"
    assert settings.storage_root == "file:///data/objects"
    assert settings.source("storage_root").startswith("state file ")


def test_state_file_is_not_mixed_into_another_endpoint(env: dict[str, str]) -> None:
    up_state(env)
    settings = load_settings({}, environ={**env, "RUNYARD_ENDPOINT": "remote:50051"})
    assert settings.endpoint == "remote:50051"
    assert settings.storage_root is None


def test_state_file_of_a_dead_supervisor_is_ignored(env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    up_state(env, pid=int(done.stdout))
    assert load_settings({}, environ=env).endpoint == DEFAULT_ENDPOINT


def test_server_and_agent_ignore_the_state_file(env: dict[str, str]) -> None:
    up_state(env)
    assert load_settings({}, environ=env, use_state=False).storage_root is None


def test_typed_values_from_env_and_file(env: dict[str, str]) -> None:
    write_config(env, "max_code_bytes: 10MiB\nslots: 3\nlabels: {zone: a}\nframeworks: [pytorch=/usr/bin/python3]\n")
    settings = load_settings({}, environ={**env, "RUNYARD_AGENT_TIMEOUT": "7.5"})
    assert settings.max_code_bytes == 10 * 1024 * 1024
    assert settings.slots == 3
    assert settings.agent_timeout == 7.5
    assert settings.labels == {"zone": "a"}
    assert settings.frameworks == {"pytorch": "/usr/bin/python3"}
    labelled = load_settings({}, environ={**env, "RUNYARD_LABELS": "gpu=a100, zone=b"})
    assert labelled.labels == {"gpu": "a100", "zone": "b"}


def test_bad_values_name_their_source(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="RUNYARD_SLOTS: 'two' is not a whole number"):
        load_settings({}, environ={**env, "RUNYARD_SLOTS": "two"})
    write_config(env, "endpont: 127.0.0.1:1\n")
    with pytest.raises(ConfigError, match=r"config file .*unknown key 'endpont'"):
        load_settings({}, environ=env)
    write_config(env, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings({}, environ=env)


def test_dashed_keys_in_the_config_file_are_accepted(env: dict[str, str]) -> None:
    write_config(env, "s3-endpoint-url: http://minio:9000\n")
    assert load_settings({}, environ=env).s3_endpoint_url == "http://minio:9000"


def test_default_file_locations_follow_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert config_path(env) == tmp_path / ".config" / "runyard" / "config.yaml"
    assert state_path(env) == tmp_path / ".local" / "state" / "runyard" / "up.yaml"
    (tmp_path / ".config" / "runyard").mkdir(parents=True)
    config_path(env).write_text("endpoint: home:1\n")
    assert load_settings({}, environ=env).endpoint == "home:1"


def test_state_file_round_trip_and_owner_only_removal(env: dict[str, str]) -> None:
    state = up_state(env)
    assert read_state(env) == state
    remove_state(pid=state.pid + 1, environ=env)  # another supervisor's: kept
    assert read_state(env) == state
    remove_state(pid=state.pid, environ=env)
    assert read_state(env) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("100MiB", 100 * 1024**2),
        ("2M", 2_000_000),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("2T", 2 * 10**12),  # refused before the manifest's grammar and this one became one
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
