"""A resumed attempt's points that an earlier attempt reported are repeats; each attempt's RunAssigned says
what it resumes from."""

from __future__ import annotations

from runyard.server.domain.checkpoint_layout import manifest_uri
from runyard.server.domain.metric_repeats import RepeatFilter, RunSteps
from runyard.v1 import common_pb2, events_pb2

from .runs import AGENT, OTHER_AGENT, new_run, step


def test_points_up_to_an_earlier_attempts_highest_step_are_repeats_per_name() -> None:
    steps = RunSteps()
    assert all(steps.keep(1, "loss", s) for s in range(1, 6))
    assert steps.keep(1, "val", 2)
    # Attempt 2 resumed from step 3: 4 and 5 again, then new steps.
    assert [s for s in range(4, 9) if steps.keep(2, "loss", s)] == [6, 7, 8]
    assert [s for s in (2, 3, 4) if steps.keep(2, "val", s)] == [3, 4]
    assert steps.keep(2, "new_metric", 1)
    # Attempt 3 (resumed from 6): everything up to what attempts 1 and 2 reached is a repeat.
    assert [s for s in range(5, 11) if steps.keep(3, "loss", s)] == [9, 10]
    # The same attempt reporting a step twice is not a repeat of an earlier attempt: both recorded, as before.
    assert steps.keep(3, "loss", 10)


def test_a_filter_seeded_from_the_read_models_goes_on_as_one_that_saw_everything() -> None:
    seen = RepeatFilter()
    seen.kept("r", 1, list(range(1, 6)), [("loss", s) for s in range(1, 6)])
    seeded = RepeatFilter()
    seeded.seed("r", {1: {"loss": 5}})
    later = list(range(3, 9))
    assert seen.kept("r", 2, later, [("loss", s) for s in later]) == [6, 7, 8]
    assert seeded.kept("r", 2, later, [("loss", s) for s in later]) == [6, 7, 8]


def test_each_assignment_records_the_checkpoint_its_attempt_resumes_from() -> None:
    run, log = new_run(max_restarts=2)
    (first,) = step(run, log, lambda r: r.assign(AGENT, ["0"]))
    assert not first.HasField("resume_from")
    step(run, log, lambda r: r.report_staging(1))
    step(run, log, lambda r: r.report_started(1))
    ck = common_pb2.Checkpoint(
        checkpoint_id="1-1",
        run_id=run.run_id,
        attempt=1,
        step=30,
        manifest_uri=manifest_uri(run.spec.results_uri, "1-1"),
    )
    step(run, log, lambda r: r.report_checkpointed(1, ck))
    step(run, log, lambda r: r.agent_lost(AGENT))
    (second,) = step(run, log, lambda r: r.assign(OTHER_AGENT, ["0"]))
    assert isinstance(second, events_pb2.RunAssigned) and second.resume_from == ck
