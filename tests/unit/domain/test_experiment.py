"""Creating an experiment: its runs, their ids and specs; and its cancel."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from runyard.server.domain import events as ev
from runyard.server.domain.errors import DomainError, IllegalTransition
from runyard.server.domain.experiment import Experiment, new_run
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.manifest_model import Scalar
from runyard.server.domain.run import Run
from runyard.v1 import common_pb2, events_pb2

MANIFEST = """
name: digits-mlp
framework: {name: pytorch, version: "2.13"}
command: python train.py --lr ${lr} --act ${act} --data ${DATA_DIR}
resources: {gpus: 1, cpus: 2, memory: 4Gi}
data: s3://datasets/digits
results: s3://results/digits/
hyperparameters:
  lr: {type: log, min: 1.0e-3, max: 1.0e-1, count: 3}
  act: {type: categorical, values: [relu, "leaky relu"]}
  deep: {type: const, value: true}
search: {method: grid}
metrics: {patterns: ['val_acc=(?P<val_accuracy>[0-9.]+)']}
max_restarts: 2
env: {OMP_NUM_THREADS: 1}
"""


def create(
    experiment_id: str = "exp-abc",
) -> tuple[events_pb2.ExperimentCreated, list[tuple[str, events_pb2.RunCreated]]]:
    return Experiment.create(experiment_id, "acct-1", parse_manifest(MANIFEST), MANIFEST, "s3://code/c.tgz", "req-1")


def test_runs_follow_the_manifest_in_index_order() -> None:
    opened, runs = create()
    assert len(runs) == 6
    assert list(opened.run_ids) == [run_id for run_id, _ in runs]
    assert (opened.name, opened.manifest_yaml, opened.code_uri, opened.client_request_id) == (
        "digits-mlp",
        MANIFEST,
        "s3://code/c.tgz",
        "req-1",
    )
    for index, (run_id, created) in enumerate(runs):
        assert run_id == ev.run_id_for("exp-abc", index) == created.run_id
        assert (created.experiment_id, created.account_id, created.index) == ("exp-abc", "acct-1", index)


def test_a_run_spec_carries_everything_the_agent_needs() -> None:
    _, runs = create()
    run_id, created = runs[1]
    spec = created.spec
    assert spec.command == "python train.py --lr 0.001 --act 'leaky relu' --data ${DATA_DIR}"
    assert dict(spec.hyperparameters) == {
        "lr": struct_pb2.Value(number_value=0.001),
        "act": struct_pb2.Value(string_value="leaky relu"),
        "deep": struct_pb2.Value(bool_value=True),
    }
    assert spec.framework == common_pb2.Framework(name="pytorch", version="2.13")
    assert spec.resources == common_pb2.Resources(gpus=1, cpus=2, memory_bytes=4 * 2**30)
    assert (spec.code_uri, spec.data_uri) == ("s3://code/c.tgz", "s3://datasets/digits")
    assert spec.results_uri == f"s3://results/digits/{run_id}", "one results prefix per run"
    assert [p.regex for p in spec.metric_patterns] == ["val_acc=(?P<val_accuracy>[0-9.]+)"]
    assert dict(spec.env) == {"OMP_NUM_THREADS": "1"}
    assert spec.max_restarts == 2


def test_recreating_gives_byte_identical_events() -> None:
    """A retried create (same request id, so same experiment id) must not differ in any byte."""
    first_opened, first_runs = create()
    again_opened, again_runs = create()
    assert ev.encode(first_opened) == ev.encode(again_opened)
    assert [ev.encode(r) for _, r in first_runs] == [ev.encode(r) for _, r in again_runs]


def test_run_ids_differ_between_experiments() -> None:
    _, one = create("exp-one")
    _, two = create("exp-two")
    assert not {r for r, _ in one} & {r for r, _ in two}


def test_created_runs_start_queued() -> None:
    _, runs = create()
    run = Run.replay([runs[0][1]])
    assert run.state == common_pb2.RUN_STATE_QUEUED
    assert (run.attempt, run.version, run.spec) == (0, 1, runs[0][1].spec)


def test_an_experiment_is_canceled_once() -> None:
    opened, _ = create()
    experiment = Experiment.replay([opened])
    assert (experiment.version, experiment.cancel_requested) == (1, False)
    assert experiment.run_ids == tuple(opened.run_ids)
    (requested,) = experiment.request_cancel("not needed")
    experiment.apply(requested)
    assert (experiment.version, experiment.cancel_requested, experiment.cancel_reason) == (2, True, "not needed")
    assert Experiment.replay([opened, requested]) == experiment
    with pytest.raises(IllegalTransition, match=r"^experiment exp-abc is CANCEL_REQUESTED; cannot cancel$"):
        experiment.request_cancel("again")


def test_an_experiment_stream_opens_with_experiment_created() -> None:
    with pytest.raises(DomainError, match="opens with ExperimentCreated"):
        Experiment.replay([events_pb2.ExperimentCancelRequested()])


def test_a_priority_set_after_creation_replays_and_a_repeat_records_nothing() -> None:
    opened, _runs = create()
    experiment = Experiment.replay([opened])
    assert experiment.priority is None
    (changed,) = experiment.set_priority(5)
    assert changed == events_pb2.ExperimentPrioritySet(priority=5)
    again = Experiment.replay([opened, changed, events_pb2.ExperimentCancelRequested(reason="x")])
    assert (again.priority, again.cancel_requested, again.version) == (5, True, 3)
    assert again.set_priority(5) == []
    assert again.set_priority(-1) == [events_pb2.ExperimentPrioritySet(priority=-1)]


SEARCHED = MANIFEST.replace(
    "search: {method: grid}",
    "search: {method: grid, metric: val_accuracy, goal: maximize, early_stopping: asha}",
)


@pytest.mark.parametrize(
    "search",
    [
        "search: {method: grid, metric: val_accuracy, goal: maximize, early_stopping: asha}",
        "search: {method: grid, max_parallel: 2}",
    ],
)
def test_a_searched_experiment_is_created_without_runs(search: str) -> None:
    text = MANIFEST.replace("search: {method: grid}", search)
    opened, runs = Experiment.create("exp-abc", "acct-1", parse_manifest(text), text, "s3://code/c.tgz", "req-1")
    assert runs == []
    assert list(opened.run_ids) == []
    assert Experiment.replay([opened]).run_ids == ()


def test_a_budget_alone_does_not_make_an_experiment_searched() -> None:
    text = MANIFEST.replace("search: {method: grid}", "search: {method: grid, max_time: 1h, max_gpu_hours: 2}")
    _, runs = Experiment.create("exp-abc", "acct-1", parse_manifest(text), text, "s3://code/c.tgz", "req-1")
    assert len(runs) == 6


def test_a_run_a_searcher_adds_is_the_run_a_plain_experiment_would_have() -> None:
    """Same id, same spec: whether a run comes with the experiment or from its searcher."""
    _, plain = create()
    manifest = parse_manifest(SEARCHED)
    for index, (run_id, created) in enumerate(plain):
        lr, act = [1.0e-3, 1.0e-2, 1.0e-1][index // 2], ["relu", "leaky relu"][index % 2]
        values: dict[str, Scalar] = {"lr": lr, "act": act, "deep": True}
        added = new_run("exp-abc", "acct-1", manifest, "s3://code/c.tgz", index, values)
        assert added.run_id == run_id
        assert (added.experiment_id, added.account_id, added.index) == ("exp-abc", "acct-1", index)
        assert added.spec.command == created.spec.command
        assert added.spec.hyperparameters == created.spec.hyperparameters
        assert added.spec.results_uri == created.spec.results_uri


def test_the_searcher_records_replay_onto_the_experiment() -> None:
    opened, _ = Experiment.create("exp-abc", "acct-1", parse_manifest(SEARCHED), SEARCHED, "s3://code/c.tgz", "req-1")
    r0, r1 = ev.run_id_for("exp-abc", 0), ev.run_id_for("exp-abc", 1)
    stream = [
        opened,
        events_pb2.ExperimentRunAdded(run_id=r0, index=0, hyperparameters={"lr": "0.001"}),
        events_pb2.ExperimentRunAdded(run_id=r1, index=1, hyperparameters={"lr": "0.01"}),
        events_pb2.RunPromoted(run_id=r0, rung=0, level=1, value=0.5),
        events_pb2.ExperimentBestFound(run_id=r0, step=1, value=0.5),
        events_pb2.ExperimentPrioritySet(priority=3),
        events_pb2.ExperimentBudgetSpent(reason="time budget of 1h spent"),
        events_pb2.ExperimentCompleted(reason="time budget of 1h spent"),
    ]
    experiment = Experiment.replay(stream)
    assert experiment.run_ids == (r0, r1)
    assert (experiment.budget_spent, experiment.completed) == ("time budget of 1h spent", "time budget of 1h spent")
    assert (experiment.priority, experiment.cancel_requested, experiment.version) == (3, False, len(stream))
    # A cancel is still possible (the runs still winding down are canceled with it).
    (cancel,) = experiment.request_cancel("stop it")
    experiment.apply(cancel)
    assert experiment.cancel_requested
    with pytest.raises(DomainError, match="RunCreated is not an experiment event"):
        experiment.apply(events_pb2.RunCreated(run_id=r0))


def test_a_fork_starts_every_run_and_every_later_trial_from_the_checkpoint() -> None:
    ck = common_pb2.Checkpoint(checkpoint_id="2-5", run_id="run-source0000", attempt=2, step=40)
    text = MANIFEST + "from_run: run-source0000\n"
    manifest = parse_manifest(text)
    assert manifest.from_run == "run-source0000"
    _, runs = Experiment.create("exp-abc", "acct-1", manifest, text, "s3://code/c.tgz", "req-1", ck)
    assert runs and all(created.spec.start_from == ck for _, created in runs)
    assert Run.replay([runs[0][1]]).resume_from == ck  # its first attempt stages the fork's checkpoint
    opened, _ = Experiment.create("exp-s", "acct-1", parse_manifest(SEARCHED), SEARCHED, "s3://code/c.tgz", "r", ck)
    _, trial = Experiment.replay([opened]).add_trial(0, {"lr": 0.01, "act": "relu", "deep": True})
    assert trial.spec.start_from == ck
    _, plain = create()
    assert not plain[0][1].spec.HasField("start_from")
    with pytest.raises(Exception, match="from_run"):
        parse_manifest(MANIFEST + "from_run: exp-notarun\n")
