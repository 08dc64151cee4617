"""Laying run transitions over a stale snapshot: GPUs freed at once, never freed twice, never double-booked."""

from __future__ import annotations

from runyard.server.domain.scheduling import QueuedRun
from runyard.server.queries.scheduling import Holding, Snapshot, account_states, agent_state, overlay
from runyard.v1 import common_pb2, events_pb2

RS = common_pb2.RunState
AGENT = {
    "id": "a1",
    "slots": 2,
    "gpu_ids": '["g0", "g1"]',
    "gpus": "[]",
    "frameworks": '[["python", ""]]',
    "labels": "{}",
    "lost": False,
    "draining": False,
}


def held(run_id: str, gpu: str, attempt: int = 1) -> Holding:
    return Holding(run_id, "exp", "acct", "a1", (gpu,), 1, attempt, RS.RUN_STATE_RUNNING, False)


def snapshot(holding: list[Holding], queue: list[str]) -> Snapshot:
    queued = [QueuedRun(run_id=r, account_id="acct", gpus=1, queued_position=i) for i, r in enumerate(queue)]
    plans = {"acct": (2, 0)}
    return Snapshot(
        queue=queued,
        agents=[agent_state(AGENT, holding)],
        accounts=account_states(plans, holding, {"acct"} if queue else set()),
        holding=holding,
        experiment_of={r: "exp" for r in queue},
        agent_rows=[AGENT],
        plans=plans,
    )


def test_an_end_frees_the_gpu_and_an_assignment_takes_one() -> None:
    before = snapshot([held("r1", "g0"), held("r2", "g1")], ["r3"])
    after = overlay(
        before,
        [
            ("r1", events_pb2.RunCompleted(attempt=1), 11),
            ("r3", events_pb2.RunAssigned(attempt=1, agent_id="a1", gpu_ids=["g0"]), 12),
            ("r2", events_pb2.RunStopRequested(reason="asha"), 13),
        ],
    )
    assert after is not None
    assert sorted(h.run_id for h in after.holding) == ["r2", "r3"]
    assert after.queue == []
    assert after.agents[0].busy_gpu_ids == frozenset({"g0", "g1"}) and after.agents[0].running == 2
    assert after.accounts["acct"].gpus_in_use == 2
    assert next(h for h in after.holding if h.run_id == "r2").cancel_requested


def test_transitions_the_rows_already_show_change_nothing() -> None:
    before = snapshot([held("r1", "g0", attempt=2)], [])
    after = overlay(
        before,
        [
            ("r1", events_pb2.RunAssigned(attempt=1, agent_id="a1", gpu_ids=["g1"]), 11),
            ("r1", events_pb2.RunFailed(attempt=1), 12),  # the old attempt's end: attempt 2 still holds g0
            ("r1", events_pb2.RunAssigned(attempt=2, agent_id="a1", gpu_ids=["g0"]), 13),
            ("r9", events_pb2.RunCompleted(attempt=1), 14),  # already gone from the rows
        ],
    )
    assert after is not None
    assert after.holding == before.holding
    assert after.agents[0].busy_gpu_ids == frozenset({"g0"})


def test_an_assignment_of_a_run_the_snapshot_does_not_know_asks_for_the_read_models() -> None:
    assigned = events_pb2.RunAssigned(attempt=1, agent_id="a1", gpu_ids=["g0"])
    assert overlay(snapshot([], []), [("r5", assigned, 11)]) is None


def created(run_id: str, account: str = "acct", gpus: int = 1, priority: int = 0) -> events_pb2.RunCreated:
    spec = common_pb2.RunSpec(command="true", priority=priority)
    spec.resources.gpus = gpus
    spec.resources.gpu_model = "H100"
    spec.resources.agent_labels["zone"] = "a"
    return events_pb2.RunCreated(run_id=run_id, experiment_id="exp-new", account_id=account, spec=spec)


def test_a_new_run_joins_the_queue_from_its_run_created_in_log_order() -> None:
    before = snapshot([held("r1", "g0")], ["r2"])
    after = overlay(before, [("r3", created("r3", gpus=2, priority=5), 40), ("r4", created("r4"), 41)])
    assert after is not None
    assert [q.run_id for q in after.queue] == ["r2", "r3", "r4"]
    new = after.queue[1]
    assert (new.account_id, new.gpus, new.priority, new.queued_position) == ("acct", 2, 5, 40)
    assert (new.gpu_model, dict(new.labels), new.framework) == ("H100", {"zone": "a"}, "python")
    assert after.experiment_of["r3"] == "exp-new"
    assert after.accounts["acct"].gpus_in_use == 1


def test_a_new_run_already_in_the_rows_or_already_over_is_not_queued_again() -> None:
    before = snapshot([held("r1", "g0")], ["r2"])
    after = overlay(
        before,
        [
            ("r2", created("r2"), 30),  # the rows show it queued
            ("r1", created("r1"), 31),  # the rows show it holding a GPU
            ("r5", created("r5"), 32),  # created, placed and done, all since the read models' position
            ("r5", events_pb2.RunAssigned(attempt=1, agent_id="a1", gpu_ids=["g1"]), 33),
            ("r5", events_pb2.RunCompleted(attempt=1), 34),
            ("r6", created("r6"), 35),  # created, then canceled from the queue
            ("r6", events_pb2.RunCanceled(attempt=0), 36),
        ],
    )
    assert after is not None
    assert [q.run_id for q in after.queue] == ["r2"]
    assert [h.run_id for h in after.holding] == ["r1"]


def test_a_new_run_of_an_account_the_snapshot_has_no_plan_for_asks_for_the_read_models() -> None:
    assert overlay(snapshot([], []), [("r7", created("r7", account="newcomer"), 50)]) is None


def test_a_preemption_marks_the_run_stopping_and_an_assignment_carries_what_preemption_weighs() -> None:
    before = snapshot([held("r1", "g0")], [])
    before.queue = [QueuedRun("r3", "acct", gpus=1, priority=4, queued_position=1, not_preemptible=True)]
    before.experiment_of = {"r3": "exp"}
    after = overlay(
        before,
        [
            ("r1", events_pb2.RunPreemptRequested(reason="why", by_run_id="r3", rule="priority"), 11),
            ("r3", events_pb2.RunAssigned(attempt=1, agent_id="a1", gpu_ids=["g1"]), 12),
        ],
    )
    assert after is not None
    by_id = {h.run_id: h for h in after.holding}
    assert by_id["r1"].preempt_requested and not by_id["r1"].cancel_requested
    assert (by_id["r3"].priority, by_id["r3"].not_preemptible, by_id["r3"].assigned_position) == (4, True, 12)
