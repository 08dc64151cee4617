"""Small builders shared by the handler tests."""

from __future__ import annotations

import textwrap

from runyard.server.app.aggregates import EXPERIMENT
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import AssignRun, CreateAccount, SubmitExperiment
from runyard.v1 import agent_pb2, events_pb2


def manifest(name: str = "exp", runs: int = 1, gpus: int = 1) -> str:
    text = textwrap.dedent(
        f"""\
        name: {name}
        framework: {{name: python}}
        command: "true"
        results: s3://results/{name}
        resources: {{gpus: {gpus}}}
        """
    )
    if runs > 1:
        text += f"hyperparameters:\n  i: {{type: int, min: 1, max: {runs}}}\nsearch: {{method: grid}}\n"
    return text


def submitted_runs(bus: MessageBus, runs: int = 1, account_id: str = "acct") -> tuple[str, list[str]]:
    experiment_id = bus.execute(SubmitExperiment(account_id, manifest(runs=runs))).experiment_id
    return experiment_id, list(bus.load(EXPERIMENT, experiment_id).run_ids)


def assigned_run(bus: MessageBus, agent_id: str = "agent-1") -> str:
    _, (run_id,) = submitted_runs(bus)
    bus.execute(AssignRun(run_id, agent_id, ["GPU-0"]))
    return run_id


def account(bus: MessageBus, account_id: str = "acct", max_queued_runs: int = 0) -> None:
    bus.execute(CreateAccount(account_id, gpu_quota=4, max_queued_runs=max_queued_runs, storage_prefixes=["s3://results/"]))


def report(run_id: str, event_id: str, agent_id: str = "agent-1", **body: object) -> agent_pb2.AgentReport:
    return agent_pb2.AgentReport(event_id=event_id, agent_id=agent_id, run_id=run_id, **body)  # type: ignore[arg-type]


def registration(agent_id: str = "agent-1") -> agent_pb2.AgentReport:
    registered = events_pb2.AgentRegistered(agent_id=agent_id, hostname="h", slots=1, gpu_ids=["GPU-0"])
    return agent_pb2.AgentReport(event_id=f"reg-{agent_id}", agent_id=agent_id, registered=registered)
