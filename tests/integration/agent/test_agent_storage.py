"""The agent's own storage checks, on a real agent over a real NATS with real storage (files, moto S3).

User code writes $RESULT_DIR and the agent, which may read what user code may
not, uploads it: a link there must never bring its target's bytes along. And
the agent decodes a URI before it stages from it, as the control plane does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runyard.agent.config import AgentConfig
from runyard.objectstore import ObjectStore, open_store
from runyard.v1.agent_pb2 import AgentReport, WorkAssignment
from runyard.v1.common_pb2 import FailureReason, LogStream
from tests.integration.agent.harness import running_agent, texts, transitions
from tests.integration.agent.test_agent_runs import agent_config, work
from tests.support.services import MotoS3, NatsServer

pytestmark = pytest.mark.integration

HOST_SECRET = "the agent's secret, which user code cannot read\n"

# User code that cannot read the secret itself, but leaves links to it (and to its folder) for the upload.
LINKING = """\
import os, sys
result = os.environ["RESULT_DIR"]
open(os.path.join(result, "model.txt"), "w").write("weights")
os.symlink(sys.argv[1], os.path.join(result, "stolen.txt"))
os.symlink(os.path.dirname(sys.argv[1]), os.path.join(result, "stolen-dir"))
os.symlink("/etc/passwd", os.path.join(result, "passwd"))
"""


async def one_run(config: AgentConfig, assignment: WorkAssignment) -> list[AgentReport]:
    async with running_agent(config) as agent:
        await agent.send_work(assignment)
        return await agent.until_terminal(assignment.run_id)


def host_secret(tmp_path: Path) -> Path:
    folder = tmp_path / "agent-private"
    folder.mkdir()
    secret = folder / "keys.yaml"
    secret.write_text(HOST_SECRET)
    return secret


def linking_run(tmp_path: Path, results_uri: str) -> WorkAssignment:
    script = tmp_path / "link.py"
    script.write_text(LINKING)
    return work(f"python {script} {host_secret(tmp_path)}", results_uri=results_uri)


def check_links_not_uploaded(reports: list[AgentReport], store: ObjectStore, results_uri: str) -> None:
    assert transitions(reports) == ["staging", "started", "uploading", "completed"]
    listed = store.list(results_uri)
    attempt_files = [info.uri for info in listed if info.uri.startswith(f"{results_uri}/attempts/")]
    assert attempt_files == [f"{results_uri}/attempts/1/output.log"], "a completed attempt stores its output log there"
    uploaded = {
        info.uri.rsplit("/", 1)[1]: store.get_bytes(info.uri) for info in listed if info.uri not in attempt_files
    }
    assert uploaded == {"model.txt": b"weights"}, "only the regular file goes up; no link's target"
    agent_lines = " | ".join(texts(reports, LogStream.LOG_STREAM_AGENT))
    for name in ("stolen.txt", "stolen-dir", "passwd"):
        assert f"not uploaded: {name} -> " in agent_lines, agent_lines
    assert "uploaded 1 result files" in agent_lines


def test_links_in_result_dir_are_skipped_not_followed_with_file_storage(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # Unsandboxed: the upload's own defence is under test (the script, and the links' targets, are host files).
    config = agent_config(tmp_path, nats_server, sandbox="none")
    store = open_store(config.storage_root, None)
    assignment = linking_run(tmp_path, "s3://results/links/run-a")
    reports = asyncio.run(one_run(config, assignment))
    check_links_not_uploaded(reports, store, "s3://results/links/run-a")
    stored = tmp_path / "objects" / "results" / "links" / "run-a"
    assert sorted(p.name for p in stored.iterdir()) == ["attempts", "model.txt"]
    assert not any(p.is_symlink() for p in stored.rglob("*"))


def test_links_in_result_dir_are_skipped_not_followed_with_s3_storage(
    tmp_path: Path, nats_server: NatsServer, moto_s3: MotoS3
) -> None:
    config = agent_config(
        tmp_path, nats_server, storage_root=None, s3_endpoint_url=moto_s3.endpoint_url, sandbox="none"
    )
    store = open_store(None, moto_s3.endpoint_url)
    store.ensure_bucket("results")
    reports = asyncio.run(one_run(config, linking_run(tmp_path, "s3://results/links/run-b")))
    check_links_not_uploaded(reports, store, "s3://results/links/run-b")


@pytest.mark.parametrize(
    "trick", ["%2e%2e/agent-private", "%2E%2E/agent-private/keys.yaml", "bkt/../../agent-private/keys.yaml"]
)
def test_the_agent_refuses_to_stage_data_from_a_uri_that_climbs_out(
    tmp_path: Path, nats_server: NatsServer, trick: str
) -> None:
    """Defence in depth: a data URI the control plane should have refused is refused by the agent too."""
    config = agent_config(tmp_path, nats_server, storage_root=(tmp_path / "store" / "objects").as_uri())
    secret = tmp_path / "store" / "agent-private" / "keys.yaml"
    secret.parent.mkdir(parents=True)
    secret.write_text(HOST_SECRET)
    (tmp_path / "store" / "objects" / "bkt").mkdir(parents=True)  # a storage root in use has buckets
    data_uri = f"{(tmp_path / 'store' / 'objects').as_uri()}/{trick}"
    assignment = work("cat $DATA_DIR/*", data_uri=data_uri, results_uri="s3://results/x")
    reports = asyncio.run(one_run(config, assignment))
    assert transitions(reports) == ["staging", "failed"]
    failed = reports[-1].failed
    assert failed.reason == FailureReason.FAILURE_REASON_STAGING_ERROR
    assert failed.message.startswith("data URI refused: "), failed.message
    assert HOST_SECRET.strip() not in " ".join(texts(reports, LogStream.LOG_STREAM_STDOUT))
