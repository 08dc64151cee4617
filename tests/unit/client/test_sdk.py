"""The SDK's side of the API contract, against an in-process fake of the API."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from runyard.client import ApiError, Client, ServerUnreachable
from runyard.client.sdk import CHUNK_BYTES
from runyard.v1 import common_pb2
from tests.unit.client.fake_server import FakeServer

RS = common_pb2.RunState


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_upload_streams_1_mib_chunks_with_the_size_first(fake: FakeServer, tmp_path: Path) -> None:
    package = tmp_path / "code.tar.gz"
    package.write_bytes(b"x" * (2 * CHUNK_BYTES + 123))
    moved: list[int] = []
    with Client(fake.endpoint) as client:
        reply = client.upload_code(package, moved.append)
    chunks = fake.state.upload_chunks
    assert [len(c.chunk) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 123]
    assert chunks[0].total_bytes == 2 * CHUNK_BYTES + 123
    assert all(c.total_bytes == 0 for c in chunks[1:])
    assert sum(moved) == package.stat().st_size
    assert reply.code_uri == "s3://runyard/code/abc.tar.gz"


def test_create_retries_on_unavailable_with_one_request_id(fake: FakeServer) -> None:
    fake.state.fail_first["CreateExperiment"] = 2
    with Client(fake.endpoint, retry_s=10) as client:
        experiment = client.create_experiment("name: x\n", "s3://runyard/code/abc.tar.gz")
    ids = {r.client_request_id for r in fake.state.create_requests}
    assert experiment.id == "exp-1"
    assert len(fake.state.create_requests) == 3
    assert len(ids) == 1 and ids != {""}


def test_lists_iterate_every_page(fake: FakeServer) -> None:
    fake.state.page_size = 1
    with Client(fake.endpoint) as client:
        assert [r.id for r in client.list_runs(experiment_id="exp-1")] == ["run-a", "run-b"]
        assert [r.id for r in client.list_runs(states=[RS.RUN_STATE_FAILED])] == ["run-b"]
        assert [e.id for e in client.list_experiments()] == ["exp-1"]
        assert [line.text for line in client.get_run_logs("run-a")] == [f"line {i}" for i in range(5)]


def test_errors_carry_the_status_and_the_servers_words(fake: FakeServer) -> None:
    with Client(fake.endpoint) as client, pytest.raises(ApiError) as caught:
        client.get_experiment("exp-missing")
    assert str(caught.value) == "NOT_FOUND: experiment exp-missing not found"


def test_watch_resumes_after_a_server_restart_without_gap_or_duplicate(fake: FakeServer) -> None:
    fake.state.pause_after = 3
    seen: list[str] = []
    notices: list[str] = []
    with Client(fake.endpoint, watch_retry_s=20) as client:
        for update in client.watch_run("run-a", on_retry=notices.append):
            seen.append(update.cursor)
            if len(seen) == 3:
                fake.restart()  # the open stream breaks mid-watch
                fake.state.release.set()
    assert seen == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert fake.state.watch_cursors == ["", "p3"]
    assert len(notices) == 1 and "resuming after p3" in notices[0]


def test_watch_gives_up_when_the_server_stays_away(fake: FakeServer) -> None:
    fake.state.pause_after = 1
    started = time.monotonic()
    with Client(fake.endpoint, watch_retry_s=1.0) as client:
        updates = client.watch_run("run-a")
        assert next(updates).cursor == "p1"
        fake.stop()
        with pytest.raises((ServerUnreachable, ApiError)):
            next(updates)
    assert time.monotonic() - started < 10


def test_wait_ready_fails_fast_on_a_closed_port() -> None:
    endpoint = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with (
        Client(endpoint) as client,
        pytest.raises(ServerUnreachable, match=f"cannot reach the Runyard server at {endpoint}"),
    ):
        client.wait_ready(timeout_s=1.0)
    assert time.monotonic() - started < 5


def test_submit_packs_the_manifest_folder_and_creates(fake: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text("name: x\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    with Client(fake.endpoint) as client:
        experiment = client.submit(tmp_path / "manifest.yaml", client_request_id="req-1")
    assert experiment.id == "exp-1"
    request = fake.state.create_requests[-1]
    assert (request.manifest_yaml, request.code_uri, request.client_request_id) == (
        "name: x\n",
        "s3://runyard/code/abc.tar.gz",
        "req-1",
    )
    assert sum(len(c.chunk) for c in fake.state.upload_chunks) > 0
