"""How the CLI shows an out-of-memory end, an agent shutdown, and an agent's runtime and framework versions."""

from __future__ import annotations

import io

from rich.console import Console, RenderableType

from runyard.client import render
from runyard.v1 import common_pb2, resources_pb2

RS = common_pb2.RunState


def text(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(renderable)
    return out.getvalue()


def failed_run(reason: int, exit_code: int = 137) -> resources_pb2.Run:
    return resources_pb2.Run(
        id="run-1", experiment_id="exp-1", state=RS.RUN_STATE_FAILED, attempt=1, agent_id="gpu-1",
        failure_reason=reason, exit_code=exit_code,  # type: ignore[arg-type]
        message="used more than resources.memory (512 MiB)",
    )  # fmt: skip


def test_show_names_out_of_memory_and_says_what_to_do() -> None:
    shown = text(render.run_details(failed_run(common_pb2.FAILURE_REASON_OUT_OF_MEMORY)))
    assert "OUT_OF_MEMORY (exit code 137)" in shown
    assert "resources.memory" in shown and "not retried" in shown


def test_show_names_an_agent_shutdown() -> None:
    shown = text(render.run_details(failed_run(common_pb2.FAILURE_REASON_AGENT_SHUTDOWN, exit_code=0)))
    assert "AGENT_SHUTDOWN" in shown and "agent was stopped" in shown


def test_the_runs_table_says_out_of_memory_next_to_failed() -> None:
    rows = text(render.runs_table([failed_run(common_pb2.FAILURE_REASON_OUT_OF_MEMORY)]))
    assert "FAILED (out of memory)" in rows
    plain = text(render.runs_table([failed_run(common_pb2.FAILURE_REASON_USER_CODE, exit_code=1)]))
    assert "FAILED" in plain and "(user code)" not in plain


def test_the_agents_table_shows_the_runtime_and_framework_versions() -> None:
    agents = [
        resources_pb2.Agent(
            id="ctr-1", hostname="h1", slots=2, alive=True, runtime="container",
            frameworks=[common_pb2.Framework(name="pytorch", version="2.13", digest="sha256:" + "a" * 64)],
        ),
        resources_pb2.Agent(
            id="old-1", hostname="h2", slots=1, alive=True, frameworks=[common_pb2.Framework(name="python")],
        ),
    ]  # fmt: skip
    lines = text(render.agents_table(agents)).splitlines()
    assert "RUNTIME" in lines[0]
    [ctr] = [line for line in lines if line.startswith("ctr-1")]
    [old] = [line for line in lines if line.startswith("old-1")]
    assert "container" in ctr and "pytorch 2.13" in ctr
    assert "process" in old, "an agent from before runtimes were registered runs processes"


def test_agents_json_carries_the_runtime_and_each_frameworks_digest() -> None:
    agent = resources_pb2.Agent(
        id="ctr-1",
        runtime="container",
        frameworks=[common_pb2.Framework(name="pytorch", version="2.13", digest="sha256:ab")],
    )
    doc = render.to_dict(agent)
    assert doc["runtime"] == "container"
    assert doc["frameworks"] == [{"name": "pytorch", "version": "2.13", "digest": "sha256:ab"}]
