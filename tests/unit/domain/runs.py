"""Building runs in a given state for the run tests, through the commands a user's run goes through."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from runyard.server.domain.run import Run
from runyard.v1 import common_pb2

AGENT = "agent-1"
OTHER_AGENT = "agent-2"


def new_run(max_restarts: int = 0) -> tuple[Run, list[Message]]:
    """A QUEUED run and its stream so far."""
    spec = common_pb2.RunSpec(
        command="python train.py",
        results_uri="s3://results/exp/run-test",
        resources=common_pb2.Resources(gpus=1, cpus=1),
        max_restarts=max_restarts,
    )
    log = Run.create("run-test", "exp-test", "acct-1", 0, spec)
    return Run.replay(log), log


def step(run: Run, log: list[Message], decide: Callable[[Run], list[Message]]) -> list[Message]:
    """Decide, then record what was decided, as the command layer does."""
    events = decide(run)
    for event in events:
        run.apply(event)
    log.extend(events)
    return events


Path = list[Callable[[Run], list[Message]]]

_TO_ASSIGNED: Path = [lambda r: r.assign(AGENT, ["0"])]
_TO_STAGING: Path = [*_TO_ASSIGNED, lambda r: r.report_staging(r.attempt)]
_TO_RUNNING: Path = [*_TO_STAGING, lambda r: r.report_started(r.attempt)]
_TO_UPLOADING: Path = [*_TO_RUNNING, lambda r: r.report_uploading(r.attempt, 0)]
_CANCEL: Path = [lambda r: r.request_cancel("user")]
_PAUSE: Path = [lambda r: r.request_pause("user")]
_PREEMPT: Path = [lambda r: r.request_preempt("account b is below its fair share", "run-b", "fair-share", 60)]

#: How a run reaches each starting state of the transition table. Runs allow one restart.
PATHS: dict[str, Path] = {
    "QUEUED": [],
    "REQUEUED": [
        *_TO_RUNNING,
        lambda r: r.report_failed(r.attempt, common_pb2.FAILURE_REASON_INTERNAL, 0, "disk full"),
    ],
    "ASSIGNED": _TO_ASSIGNED,
    "STAGING": _TO_STAGING,
    "RUNNING": _TO_RUNNING,
    "UPLOADING": _TO_UPLOADING,
    "ASSIGNED+cancel": [*_TO_ASSIGNED, *_CANCEL],
    "STAGING+cancel": [*_TO_STAGING, *_CANCEL],
    "RUNNING+cancel": [*_TO_RUNNING, *_CANCEL],
    "UPLOADING+cancel": [*_TO_UPLOADING, *_CANCEL],
    "COMPLETED": [*_TO_UPLOADING, lambda r: r.report_completed(r.attempt, "s3://results/exp/run-test")],
    "FAILED": [
        *_TO_RUNNING,
        lambda r: r.report_failed(r.attempt, common_pb2.FAILURE_REASON_USER_CODE, 1, "exit 1"),
    ],
    "RUNNING+pause": [*_TO_RUNNING, *_PAUSE],
    "RUNNING+preempt": [*_TO_RUNNING, *_PREEMPT],
    "PAUSED": _PAUSE,
    "PAUSED+ran": [*_TO_RUNNING, *_PAUSE, lambda r: r.report_canceled(r.attempt, "")],
    "CANCELED": _CANCEL,
    "CANCELED+stopped": [*_TO_RUNNING, *_CANCEL, lambda r: r.report_canceled(r.attempt, "user")],
}


def run_in(label: str) -> tuple[Run, list[Message]]:
    run, log = new_run(max_restarts=1)
    for decide in PATHS[label]:
        assert step(run, log, decide), f"path to {label} made no progress"
    return run, log
