"""The preemption policy: fair-share and priority victims, on one agent, never protected runs, no thrash."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.server.domain.preemption import (
    FAIR_SHARE,
    PRIORITY,
    RunningRun,
    Victim,
    choose_victims,
    fair_shares,
)
from runyard.server.domain.scheduling import AccountState, AgentState, Gpu, QueuedRun


def agent(agent_id: str, gpus: int, model: str = "H100") -> AgentState:
    return AgentState(agent_id, 16, tuple(Gpu(f"{agent_id}-g{i}", model) for i in range(gpus)))


def running(run_id: str, account: str, agent_id: str, gpus: Sequence[int], **kw: object) -> RunningRun:
    return RunningRun(run_id, account, agent_id, tuple(f"{agent_id}-g{i}" for i in gpus), **kw)  # type: ignore[arg-type]


def test_fair_shares_split_by_quota_and_give_unwanted_share_away() -> None:
    accounts = {"a": AccountState("a", 4), "b": AccountState("b", 2)}
    assert fair_shares(accounts, {"a": 10, "b": 10}, 6) == {"a": 4.0, "b": 2.0}
    # b wants only 1: a gets the rest, up to its quota.
    assert fair_shares(accounts, {"a": 10, "b": 1}, 6) == {"a": 4.0, "b": 1.0}
    assert fair_shares({}, {"a": 3, "b": 3}, 4) == {"a": 2.0, "b": 2.0}


def test_account_below_its_share_takes_the_youngest_lowest_priority_runs_of_the_one_above() -> None:
    agents = [agent("x", 4)]
    accounts = {"a": AccountState("a", 4), "b": AccountState("b", 4)}
    held = [
        running("a1", "a", "x", [0], started_position=1),
        running("a2", "a", "x", [1], started_position=2),
        running("a3", "a", "x", [2], started_position=3, priority=5),
        running("a4", "a", "x", [3], started_position=4),
    ]
    waiting = [QueuedRun("b1", "b", gpus=2)]
    victims = choose_victims(waiting, held, agents, accounts)
    assert {v.run_id for v in victims} == {"a4", "a2"}
    assert all(v.by_run_id == "b1" and v.rule == FAIR_SHARE and v.agent_id == "x" for v in victims)
    assert victims[0].reason == "account b is below its fair share (0 of 2 GPUs); account a holds 4 of its fair 2"


def test_never_below_fair_share_never_not_preemptible_never_a_protected_account() -> None:
    agents = [agent("x", 4)]
    accounts = {"a": AccountState("a", 4), "b": AccountState("b", 4)}
    held = [running(f"a{i}", "a", "x", [i], not_preemptible=i < 3) for i in range(4)]
    # Only a3 may go: one GPU, and b wants two.
    assert choose_victims([QueuedRun("b1", "b", gpus=2)], held, agents, accounts) == []
    assert [v.run_id for v in choose_victims([QueuedRun("b1", "b", gpus=1)], held, agents, accounts)] == ["a3"]
    assert choose_victims([QueuedRun("b1", "b", gpus=1)], held, agents, accounts, protected_accounts={"a"}) == []
    # a holds exactly its fair share (2 of 4 with b holding 2): b's next run may not take from it.
    even = [running("a0", "a", "x", [0]), running("a1", "a", "x", [1])]
    even += [running("b0", "b", "x", [2]), running("b1", "b", "x", [3])]
    assert choose_victims([QueuedRun("b2", "b", gpus=1)], even, agents, accounts) == []


def test_priority_within_one_account() -> None:
    agents = [agent("x", 2)]
    held = [running("a1", "a", "x", [0, 1], priority=0)]
    victims = choose_victims([QueuedRun("a2", "a", gpus=2, priority=3)], held, agents, {"a": AccountState("a", 2)})
    assert victims == [
        Victim("a1", "a2", PRIORITY, "run a2 of account a has priority 3, higher than this run's 0", "x")
    ]
    assert choose_victims([QueuedRun("a2", "a", gpus=2, priority=0)], held, agents) == []


def test_victims_on_one_agent_where_the_run_fits() -> None:
    # b wants 2 GPUs; a holds one GPU on each of x and y and two on z.
    agents = [agent("x", 2), agent("y", 2), agent("z", 2)]
    held = [
        running("ax", "a", "x", [0]),
        running("ay", "a", "y", [0]),
        running("az", "a", "z", [0, 1]),
        running("cx", "c", "x", [1], not_preemptible=True),
        running("cy", "c", "y", [1], not_preemptible=True),
    ]
    accounts = {"a": AccountState("a", 6), "b": AccountState("b", 6), "c": AccountState("c", 6)}
    victims = choose_victims([QueuedRun("b1", "b", gpus=2)], held, agents, accounts)
    assert [(v.run_id, v.agent_id) for v in victims] == [("az", "z")]


def test_nothing_more_while_victims_are_stopping() -> None:
    agents = [agent("x", 2)]
    held = [running("a1", "a", "x", [0], stopping=True, preempted=True), running("a2", "a", "x", [1])]
    assert choose_victims([QueuedRun("b1", "b", gpus=2)], held, agents) == []


def test_a_run_that_fits_needs_no_victim() -> None:
    agents = [agent("x", 2)]
    held = [running("a1", "a", "x", [0])]
    assert choose_victims([QueuedRun("b1", "b", gpus=1)], held, agents) == []


# -- properties -------------------------------------------------------------------

ACCOUNTS = ("a", "b", "c")


@st.composite
def worlds(
    draw: st.DrawFn,
) -> tuple[list[AgentState], list[RunningRun], list[QueuedRun], dict[str, AccountState], set[str]]:
    agents = [agent(f"n{i}", draw(st.integers(1, 4))) for i in range(draw(st.integers(1, 3)))]
    accounts = {a: AccountState(a, draw(st.integers(1, 8))) for a in ACCOUNTS}
    held: list[RunningRun] = []
    n = 0
    for ag in agents:
        gpus = [g.gpu_id for g in ag.gpus]
        while gpus and bool(draw(st.booleans())):
            size = draw(st.integers(1, len(gpus)))
            taken, gpus = gpus[:size], gpus[size:]
            n += 1
            held.append(
                RunningRun(
                    f"r{n}",
                    draw(st.sampled_from(ACCOUNTS)),
                    ag.agent_id,
                    tuple(taken),
                    priority=draw(st.integers(0, 2)),
                    not_preemptible=draw(st.booleans()),
                    started_position=n,
                )
            )
    waiting = [
        QueuedRun(
            f"q{i}",
            draw(st.sampled_from(ACCOUNTS)),
            gpus=draw(st.integers(1, 4)),
            priority=draw(st.integers(0, 2)),
            queued_position=100 + i,
        )
        for i in range(draw(st.integers(0, 3)))
    ]
    protected = set(draw(st.lists(st.sampled_from(ACCOUNTS), max_size=1)))
    return agents, held, waiting, accounts, protected


def _apply(
    victims: Sequence[Victim], held: Sequence[RunningRun], waiting: Sequence[QueuedRun], agents: Sequence[AgentState]
) -> tuple[list[RunningRun], list[QueuedRun]]:
    """The world once the victims stopped and their takers started on the victims' agents."""
    gone = {v.run_id for v in victims}
    now = [r for r in held if r.run_id not in gone]
    by_id = {q.run_id: q for q in waiting}
    takers: dict[str, str] = {v.by_run_id: v.agent_id for v in victims}
    for run_id, agent_id in takers.items():
        q = by_id[run_id]
        busy = {g for r in now for g in r.gpu_ids}
        free = [g.gpu_id for a in agents if a.agent_id == agent_id for g in a.gpus if g.gpu_id not in busy]
        assert len(free) >= q.gpus, "the freed GPUs hold the waiting run"
        now.append(RunningRun(run_id, q.account_id, agent_id, tuple(free[: q.gpus]), q.priority, started_position=999))
    back = [
        QueuedRun(r.run_id, r.account_id, gpus=r.gpus, priority=r.priority, queued_position=1000)
        for r in held
        if r.run_id in gone
    ]
    return now, [q for q in waiting if q.run_id not in takers] + back


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_victims_respect_the_rules(world: tuple) -> None:  # type: ignore[type-arg]
    agents, held, waiting, accounts, protected = world
    victims = choose_victims(waiting, held, agents, accounts, protected)
    by_id = {r.run_id: r for r in held}
    queued = {q.run_id: q for q in waiting}
    assert len({v.run_id for v in victims}) == len(victims)
    for v in victims:
        r, q = by_id[v.run_id], queued[v.by_run_id]
        assert not r.not_preemptible and r.account_id not in protected
        assert v.agent_id == r.agent_id
        assert v.reason
        if v.rule == PRIORITY:
            assert r.account_id == q.account_id and r.priority < q.priority
        else:
            assert v.rule == FAIR_SHARE and r.account_id != q.account_id
    # Every taker's victims are on one agent.
    for taker in {v.by_run_id for v in victims}:
        assert len({v.agent_id for v in victims if v.by_run_id == taker}) == 1
    # Fair-share never takes an account below its fair share, nor lifts the taker above its own.
    in_use: dict[str, int] = {}
    for r in held:
        in_use[r.account_id] = in_use.get(r.account_id, 0) + r.gpus
    wanted: dict[str, int] = {}
    for q in waiting:
        wanted[q.account_id] = wanted.get(q.account_id, 0) + q.gpus
    fair = fair_shares(
        accounts, {a: in_use.get(a, 0) + wanted.get(a, 0) for a in ACCOUNTS}, sum(len(a.gpus) for a in agents)
    )
    after = dict(in_use)
    for v in victims:
        after[by_id[v.run_id].account_id] -= by_id[v.run_id].gpus
    for taker in {v.by_run_id for v in victims}:
        after[queued[taker].account_id] = after.get(queued[taker].account_id, 0) + queued[taker].gpus
    for v in victims:
        if v.rule == FAIR_SHARE:
            assert after[by_id[v.run_id].account_id] >= fair[by_id[v.run_id].account_id] - 1e-6
            assert after[queued[v.by_run_id].account_id] <= fair[queued[v.by_run_id].account_id] + 1e-6
    # The world after the preemption is stable: no victim, back in the queue, preempts its taker's account's
    # runs by fair share, nor any run of a higher priority in its own account.
    now, still = _apply(victims, held, waiting, agents)
    again = choose_victims(still, now, agents, accounts, protected)
    former = {v.run_id: v for v in victims}
    taker_of = {v.by_run_id: v for v in victims}
    for v in again:
        if v.by_run_id in former:
            assert v.run_id not in taker_of, f"thrash: {v.by_run_id} preempts back {v.run_id}"


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_nothing_while_a_victim_is_stopping(world: tuple) -> None:  # type: ignore[type-arg]
    agents, held, waiting, accounts, protected = world
    if held:
        first = held[0]
        held = [RunningRun(**{**first.__dict__, "stopping": True, "preempted": True}), *held[1:]]
        assert choose_victims(waiting, held, agents, accounts, protected) == []


def test_a_free_gpu_without_a_free_slot_does_not_hold_the_run() -> None:
    one_slot = AgentState("x", 1, (Gpu("x-g0", "H100"), Gpu("x-g1", "H100")))
    held = [running("a1", "a", "x", [0])]
    victims = choose_victims([QueuedRun("a2", "a", gpus=1, priority=5)], held, [one_slot])
    assert [(v.run_id, v.rule) for v in victims] == [("a1", PRIORITY)]
    two_slots = AgentState("x", 2, one_slot.gpus)
    assert choose_victims([QueuedRun("a2", "a", gpus=1, priority=5)], held, [two_slots]) == []
