"""The scheduling policy: capacity, quotas, fair share, priority, no starvation, reasons."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.server.domain.scheduling import (
    AccountState,
    AgentState,
    Decision,
    Gpu,
    QueuedRun,
    can_ever_place,
    offers,
    queue_order,
    quota_refusal,
    schedule,
)


def agent(agent_id: str, gpus: int = 0, model: str = "H100", slots: int | None = None, **kw: object) -> AgentState:
    devices = tuple(Gpu(f"GPU-{agent_id}-{i}", model, f"NVIDIA {model} 80GB HBM3") for i in range(gpus))
    return AgentState(agent_id, slots if slots is not None else max(gpus, 1), devices, **kw)  # type: ignore[arg-type]


def run(run_id: str, account: str = "a", gpus: int = 1, position: int = 0, **kw: object) -> QueuedRun:
    return QueuedRun(run_id, account, gpus, queued_position=position, **kw)  # type: ignore[arg-type]


def runs(count: int, account: str = "a", gpus: int = 1, start: int = 0, prefix: str = "") -> list[QueuedRun]:
    p = prefix or account
    return [run(f"{p}{i}", account, gpus, start + i) for i in range(count)]


# -- placement ------------------------------------------------------------------


def test_a_run_gets_all_its_gpus_on_one_agent_of_the_requested_model() -> None:
    agents = [agent("a1", 2, "A100"), agent("h1", 1), agent("h2", 2)]
    decision = schedule([run("r", gpus=2, gpu_model="H100")], agents)
    [p] = decision.placements
    assert (p.agent_id, p.gpu_ids, p.gpu_model) == ("h2", ("GPU-h2-0", "GPU-h2-1"), "H100")


def test_the_full_device_name_matches_too() -> None:
    decision = schedule([run("r", gpu_model="nvidia h100 80gb hbm3")], [agent("h1", 1)])
    assert decision.placements[0].agent_id == "h1"


def test_busy_gpus_and_draining_agents_get_nothing() -> None:
    busy = AgentState("busy", 2, agent("busy", 2).gpus, frozenset({"GPU-busy-0", "GPU-busy-1"}), running=2)
    draining = agent("draining", 2, draining=True)
    decision = schedule([run("r")], [busy, draining])
    assert decision.placements == []
    [w] = decision.waiting
    assert w.reason.startswith("no free GPU") and w.position == 1


def test_labels_and_frameworks_must_match() -> None:
    agents = [
        agent("a", 1, labels={"pool": "x"}),
        agent("b", 1, labels={"pool": "y"}, frameworks=offers("tensorflow")),
    ]
    tf = run("tf", framework="tensorflow", labels={"pool": "y"})
    x = run("x", labels={"pool": "x"}, position=1)
    decision = schedule([tf, x], agents)
    assert {p.run_id: p.agent_id for p in decision.placements} == {"tf": "b", "x": "a"}


def test_tightest_fit_keeps_a_whole_agent_for_a_big_run() -> None:
    agents = [agent("big", 4), agent("small", 1)]
    decision = schedule([run("one", gpus=1, position=0), run("four", gpus=4, position=1)], agents)
    assert {p.run_id: p.agent_id for p in decision.placements} == {"one": "small", "four": "big"}


def test_cpu_only_runs_prefer_hosts_without_free_gpus() -> None:
    decision = schedule([run("cpu", gpus=0)], [agent("gpu", 2, slots=3), agent("cpu-host", 0, slots=2)])
    assert decision.placements[0].agent_id == "cpu-host"
    assert decision.placements[0].gpu_ids == ()


# -- submit-time refusal ----------------------------------------------------------


def test_can_ever_place_names_why_not() -> None:
    agents = [agent("a", 2), agent("b", 2)]
    assert can_ever_place(run("r", gpus=2), agents) is None
    too_big = can_ever_place(run("r", gpus=4), agents)
    assert too_big is not None and "4 GPUs" in too_big and "largest agent has 2 GPUs" in too_big
    unknown = can_ever_place(run("r", gpu_model="B200"), agents)
    assert unknown is not None and "B200" in unknown and "H100" in unknown
    framework = can_ever_place(run("r", framework="tensorflow"), agents)
    assert framework is not None and "tensorflow" in framework
    labels = can_ever_place(run("r", labels={"pool": "z"}), agents)
    assert labels is not None and "pool=z" in labels
    assert can_ever_place(run("r", gpus=1), [agent("cpu", 0)]) is not None
    # Nothing known yet (agents still starting): the run is accepted and waits.
    assert can_ever_place(run("r", gpus=64), []) is None


def test_a_run_larger_than_the_accounts_quota_is_refused() -> None:
    free = AccountState("free", gpu_quota=1)
    assert quota_refusal(run("r", gpus=1), free) is None
    refused = quota_refusal(run("r", gpus=2), free)
    assert refused is not None and "quota is 1 GPU" in refused
    assert quota_refusal(run("r", gpus=8), None) is None
    assert quota_refusal(run("r", gpus=8), AccountState("x")) is None


# -- quotas -------------------------------------------------------------------------


def test_a_free_account_runs_one_gpu_at_a_time_and_the_rest_wait_for_quota() -> None:
    accounts = {"free": AccountState("free", gpu_quota=1)}
    decision = schedule(runs(5, "free"), [agent("h", 4)], accounts)
    assert [p.run_id for p in decision.placements] == ["free0"]
    assert [(w.run_id, w.position) for w in decision.waiting] == [
        ("free1", 1),
        ("free2", 2),
        ("free3", 3),
        ("free4", 4),
    ]
    assert all(w.reason.startswith("quota: account free uses 1 of 1 GPU") for w in decision.waiting)
    assert decision.waiting[1].reason.endswith("behind 1 run")

    busy = {"free": AccountState("free", gpu_quota=1, gpus_in_use=1)}
    again = schedule(runs(4, "free", start=1), [agent("h", 4)], busy)
    assert again.placements == []
    assert again.waiting[0].reason == "quota: account free uses 1 of 1 GPU"


def test_cpu_only_runs_count_against_the_run_quota() -> None:
    accounts = {"a": AccountState("a", gpu_quota=0, run_quota=2, runs_in_use=1)}
    decision = schedule(runs(3, "a", gpus=0), [agent("cpu", 0, slots=8)], accounts)
    assert [p.run_id for p in decision.placements] == ["a0"]
    assert "CPU-only" in decision.waiting[0].reason


def test_unknown_accounts_are_unlimited() -> None:
    decision = schedule(runs(6, "nobody"), [agent("h", 8)], {})
    assert len(decision.placements) == 6


# -- order ----------------------------------------------------------------------------


def test_within_an_account_priority_then_submission_order() -> None:
    queue = [run("old", position=1), run("urgent", position=3, priority=5), run("new", position=2)]
    decision = schedule(queue, [agent("h", 2)])
    assert [p.run_id for p in decision.placements] == ["urgent", "old"]
    assert [(w.run_id, w.position) for w in decision.waiting] == [("new", 1)]


def test_weighted_fair_share_splits_contended_gpus_by_quota() -> None:
    accounts = {"big": AccountState("big", gpu_quota=4), "small": AccountState("small", gpu_quota=2)}
    queue = runs(10, "big") + runs(10, "small", start=100)
    decision = schedule(queue, [agent("h1", 3), agent("h2", 3)], accounts)
    placed = Counter(p.run_id.rstrip("0123456789") for p in decision.placements)
    assert placed == {"big": 4, "small": 2}


def test_fair_share_counts_gpus_already_held() -> None:
    accounts = {"a": AccountState("a", gpu_quota=4, gpus_in_use=2), "b": AccountState("b", gpu_quota=4)}
    decision = schedule(runs(4, "a") + runs(4, "b", start=10), [agent("h", 2)], accounts)
    assert [p.run_id for p in decision.placements] == ["b0", "b1"]


# -- no starvation ------------------------------------------------------------------------


def test_a_big_head_keeps_the_agent_closest_to_fitting_and_small_runs_backfill_elsewhere() -> None:
    # Agent x has 3 of 4 free; y has 2 of 4 free. The 4-GPU head waits on x; small runs use y only.
    x = AgentState("x", 4, agent("x", 4).gpus, frozenset({"GPU-x-0"}), running=1)
    y = AgentState("y", 4, agent("y", 4).gpus, frozenset({"GPU-y-0", "GPU-y-1"}), running=2)
    queue = [run("head", gpus=4, position=0), *runs(5, "a", start=1, prefix="small")]
    decision = schedule(queue, [x, y])
    assert decision.reservations == {"head": "x"}
    assert {p.agent_id for p in decision.placements} == {"y"}
    assert len(decision.placements) == 2
    head = decision.waiting_by_run()["head"]
    assert head.position == 1 and "agent x keeps its free capacity" in head.reason
    assert decision.waiting_by_run()["small2"].reason.startswith("behind 1 run")


def test_a_big_run_starts_despite_an_endless_stream_of_small_ones() -> None:
    """Simulated time: 1-GPU runs keep arriving and last 3 ticks; the 8-GPU run must start."""
    rng = random.Random(7)
    gpus = agent("h", 8).gpus
    holding: dict[str, tuple[frozenset[str], int]] = {}  # run -> (gpus, ends at tick)
    queue = [run("s0", position=0), run("big", gpus=8, position=1)]
    position = 2
    for tick in range(60):
        holding = {r: v for r, v in holding.items() if v[1] > tick}
        busy = frozenset(g for gs, _ in holding.values() for g in gs)
        state = AgentState("h", 8, gpus, busy, running=len(holding))
        decision = schedule(queue, [state])
        for p in decision.placements:
            if p.run_id == "big":
                assert tick <= 4, f"the big run waited {tick} ticks"
                return
            holding[p.run_id] = (frozenset(p.gpu_ids), tick + rng.randint(1, 3))
        started = {p.run_id for p in decision.placements}
        queue = [r for r in queue if r.run_id not in started]
        for _ in range(3):
            queue.append(run(f"s{position}", position=position))
            position += 1
    raise AssertionError("the 8-GPU run never started")


def test_a_quota_blocked_head_keeps_its_quota_from_smaller_runs_behind_it() -> None:
    accounts = {"a": AccountState("a", gpu_quota=3, gpus_in_use=2)}
    decision = schedule([run("two", gpus=2, position=0), run("one", gpus=1, position=1)], [agent("h", 8)], accounts)
    assert decision.placements == []
    assert "1 more" not in decision.waiting[0].reason
    assert "2 more kept for an earlier run" in decision.waiting[1].reason


def test_a_run_that_can_never_fit_reserves_nothing_and_blocks_nobody() -> None:
    decision = schedule([run("huge", gpus=16, position=0), run("ok", position=1)], [agent("h", 8)])
    assert [p.run_id for p in decision.placements] == ["ok"]
    assert decision.waiting[0].reason.startswith("resources.gpus:")
    assert decision.reservations == {}


def test_with_no_agent_every_run_says_so() -> None:
    decision = schedule(runs(2), [])
    assert [w.reason for w in decision.waiting] == ["no agent is connected", "no agent is connected"]


# -- properties ---------------------------------------------------------------------------

MODELS = ("H100", "A100")


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[QueuedRun], list[AgentState], dict[str, AccountState]]:
    agents = []
    for i in range(draw(st.integers(0, 4))):
        model = draw(st.sampled_from(MODELS))
        count = draw(st.integers(0, 8))
        devices = tuple(Gpu(f"g{i}-{j}", model) for j in range(count))
        busy = frozenset(draw(st.lists(st.sampled_from([g.gpu_id for g in devices]), unique=True)) if devices else [])
        slots = draw(st.integers(max(1, count), count + 2))
        running = draw(st.integers(len(busy), max(len(busy), slots)))
        agents.append(
            AgentState(
                f"agent{i}",
                slots,
                devices,
                busy,
                running,
                labels={"pool": draw(st.sampled_from("xy"))},
                draining=draw(st.booleans()),
            )
        )
    accounts = {}
    for name in ("a", "b", "c"):
        if draw(st.booleans()):
            accounts[name] = AccountState(
                name,
                gpu_quota=draw(st.integers(0, 8)),
                run_quota=draw(st.integers(0, 3)),
                gpus_in_use=draw(st.integers(0, 4)),
                runs_in_use=draw(st.integers(0, 2)),
            )
    queue = []
    for i in range(draw(st.integers(0, 30))):
        queue.append(
            QueuedRun(
                f"r{i}",
                draw(st.sampled_from("abc")),
                draw(st.integers(0, 9)),
                draw(st.sampled_from(("", *MODELS))),
                {"pool": draw(st.sampled_from("xy"))} if draw(st.booleans()) else {},
                "python",
                draw(st.integers(0, 2)),
                draw(st.integers(0, 1000)),
            )
        )
    return queue, agents, accounts


Cluster = tuple[list[QueuedRun], list[AgentState], dict[str, AccountState]]


def _placed_by_account(queue: Sequence[QueuedRun], decision: Decision) -> dict[str, list[QueuedRun]]:
    by_id = {r.run_id: r for r in queue}
    out: dict[str, list[QueuedRun]] = defaultdict(list)
    for p in decision.placements:
        out[by_id[p.run_id].account_id].append(by_id[p.run_id])
    return out


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_placements_respect_capacity_and_quota_and_every_run_is_accounted_for(cluster: Cluster) -> None:
    queue, agents, accounts = cluster
    decision = schedule(queue, agents, accounts)
    by_agent = {a.agent_id: a for a in agents}
    by_id = {r.run_id: r for r in queue}

    # Every run exactly once: placed or waiting, with positions 1..k per account in queue order.
    placed_ids = [p.run_id for p in decision.placements]
    waiting_ids = [w.run_id for w in decision.waiting]
    assert sorted(placed_ids + waiting_ids) == sorted(by_id)
    assert all(w.reason for w in decision.waiting)
    per_account: dict[str, list[tuple[int, QueuedRun]]] = defaultdict(list)
    for w in decision.waiting:
        per_account[by_id[w.run_id].account_id].append((w.position, by_id[w.run_id]))
    for items in per_account.values():
        assert [pos for pos, _ in sorted(items)] == list(range(1, len(items) + 1))
        assert [r for _, r in sorted(items)] == sorted((r for _, r in items), key=queue_order)

    # Capacity: free GPUs only, never twice, all on one live agent that matches.
    taken: set[str] = set()
    slots_used: Counter[str] = Counter()
    for p in decision.placements:
        r, a = by_id[p.run_id], by_agent[p.agent_id]
        assert not a.draining
        assert len(p.gpu_ids) == r.gpus
        devices = {g.gpu_id: g for g in a.gpus}
        for g in p.gpu_ids:
            assert g in devices and g not in a.busy_gpu_ids and g not in taken
            assert not r.gpu_model or devices[g].model == r.gpu_model
            taken.add(g)
        assert all(a.labels.get(k) == v for k, v in r.labels.items())
        slots_used[p.agent_id] += 1
    for agent_id, used in slots_used.items():
        a = by_agent[agent_id]
        assert a.running + used <= a.slots

    # Quota: GPUs held stay within gpu_quota; CPU-only runs within run_quota.
    for account_id, placed in _placed_by_account(queue, decision).items():
        acct = accounts.get(account_id)
        if acct is None:
            continue
        gpu_runs = [r for r in placed if r.gpus]
        if gpu_runs:
            assert acct.gpu_quota is not None
            assert acct.gpus_in_use + sum(r.gpus for r in gpu_runs) <= acct.gpu_quota
        cpu_runs = [r for r in placed if not r.gpus]
        if cpu_runs and acct.run_quota:
            assert acct.runs_in_use + len(cpu_runs) <= acct.run_quota


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_runs_that_can_never_fit_are_never_placed_and_say_so(cluster: Cluster) -> None:
    queue, agents, accounts = cluster
    decision = schedule(queue, agents, accounts)
    placed = {p.run_id for p in decision.placements}
    for r in queue:
        if agents and can_ever_place(r, agents) is not None:
            assert r.run_id not in placed
            assert decision.waiting_by_run()[r.run_id].reason == can_ever_place(r, agents)


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_backfill_never_takes_capacity_the_accounts_head_could_use_now(cluster: Cluster) -> None:
    """One account: give back everything placed behind its first waiting run; that run still does not fit."""
    queue, agents, _ = cluster
    queue = [QueuedRun(r.run_id, "a", *_rest(r)) for r in queue]
    decision = schedule(queue, agents)
    ordered = sorted(queue, key=queue_order)
    placed = {p.run_id for p in decision.placements}
    waiting = [r for r in ordered if r.run_id not in placed and can_ever_place(r, agents) is None]
    if not waiting:
        return
    head = waiting[0]
    ahead = {r.run_id for r in ordered[: ordered.index(head)]}
    # The cluster as it was when the head's turn came: only the runs ahead of it placed.
    busy: dict[str, set[str]] = defaultdict(set)
    running: Counter[str] = Counter()
    for p in decision.placements:
        if p.run_id in ahead:
            busy[p.agent_id].update(p.gpu_ids)
            running[p.agent_id] += 1
    then = [
        AgentState(
            a.agent_id,
            a.slots,
            a.gpus,
            a.busy_gpu_ids | busy[a.agent_id],
            a.running + running[a.agent_id],
            a.frameworks,
            a.labels,
            a.draining,
        )
        for a in agents
    ]
    alone = schedule([head], then)
    assert alone.placements == [], "a run behind the head took capacity the head could have used"


def _rest(r: QueuedRun) -> tuple[int, str, dict[str, str], str, int, int]:
    return (r.gpus, r.gpu_model, dict(r.labels), r.framework, r.priority, r.queued_position)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 8),
    st.integers(0, 8),
    st.integers(0, 8),
    st.integers(1, 16),
)
def test_fair_share_gives_each_free_gpu_to_the_account_furthest_below_its_share(
    quota_a: int, quota_b: int, used_a: int, used_b: int, free: int
) -> None:
    used_a, used_b = min(used_a, quota_a), min(used_b, quota_b)
    accounts = {
        "a": AccountState("a", gpu_quota=quota_a, gpus_in_use=used_a),
        "b": AccountState("b", gpu_quota=quota_b, gpus_in_use=used_b),
    }
    queue = runs(10, "a") + runs(10, "b", start=100)
    decision = schedule(queue, [agent("h", free)], accounts)
    got = Counter(p.run_id[0] for p in decision.placements)
    end_a, end_b = used_a + got["a"], used_b + got["b"]
    assert end_a <= quota_a and end_b <= quota_b
    # Whoever got a GPU was at or below the other's share when it did (unless the other was at quota).
    if got["a"] and end_b < quota_b:
        assert (end_a - 1) / quota_a <= end_b / quota_b
    if got["b"] and end_a < quota_a:
        assert (end_b - 1) / quota_b <= end_a / quota_a
    # Work-conserving: a free GPU stays idle only when both accounts are at quota.
    if len(decision.placements) < free:
        assert end_a == quota_a and end_b == quota_b


def test_a_decision_over_ten_thousand_runs_is_fast() -> None:
    import time

    agents = [agent(f"h{i}", 8) for i in range(8)]
    queue = runs(10_000, "a") + runs(200, "b", start=20_000)
    started = time.perf_counter()
    decision = schedule(queue, agents, {"a": AccountState("a", gpu_quota=48)})
    per_run = (time.perf_counter() - started) / len(queue)
    assert len(decision.placements) == 64
    assert per_run < 0.001, f"{per_run * 1e6:.0f} us per run"


def test_a_run_that_preempted_others_reserves_the_agent_they_free() -> None:
    # Both agents are full; b1 would reserve n1 (lowest id on a tie), but its victims are on n2.
    agents = [
        agent("n1", 2, busy_gpu_ids=frozenset({"GPU-n1-0", "GPU-n1-1"}), running=2),
        agent("n2", 2, busy_gpu_ids=frozenset({"GPU-n2-0", "GPU-n2-1"}), running=2),
    ]
    queue = [run("b1", "b", gpus=2)]
    assert schedule(queue, agents).reservations == {"b1": "n1"}
    assert schedule(queue, agents, promised={"b1": "n2"}).reservations == {"b1": "n2"}
    # A promise of an agent that could never hold it is ignored.
    small = [*agents, agent("n3", 1)]
    assert schedule(queue, small, promised={"b1": "n3"}).reservations == {"b1": "n1"}
