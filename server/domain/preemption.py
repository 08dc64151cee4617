"""Preemption policy: which running runs give up their GPUs to a waiting run, and why. Pure.

The scheduler asks this after each decision, for the runs the decision left
waiting for capacity (each account's blocked head: the run that holds its
account's reservation). Two rules let a waiting run take GPUs from running ones:

* **fair-share.** A run of an account below its fair share may take GPUs from
  runs of accounts above theirs, as long as the taker stays within its fair
  share once it runs and no victim's account falls below its own fair share.
  Fair shares are the pool's GPUs split by quota weight among the accounts
  that hold or want GPUs (water-filling: an account never gets more than it
  holds plus wants, nor more than its quota; what it leaves goes to the
  others by weight).
* **priority.** Within one account, a waiting run may take GPUs from a run of
  strictly lower priority (the account's use does not change).

Never a run marked not preemptible, nor a run of an account whose policy
forbids preemption. All of a run's GPUs are on one agent, so victims are
chosen on one agent such that its free GPUs plus theirs hold the waiting run:
the fewest GPUs taken, then the lowest priority, then the youngest (last
started) runs. While any earlier victim is still stopping nothing more is
preempted: its GPUs are about to free and the decision may change.

No thrash: both rules are one-way. After a fair-share preemption the victim's
account is still at or above its fair share and the taker at or below its
own, so the victim's run, back in the queue, can never preempt by fair share
in return; a priority preemption needs strictly higher priority.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from runyard.server.domain.scheduling import (
    AccountState,
    AgentState,
    Gpu,
    QueuedRun,
    model_matches,
    queue_order,
    runs_framework,
)

FAIR_SHARE = "fair-share"
PRIORITY = "priority"


@dataclass(frozen=True)
class RunningRun:
    """A run that holds GPUs on an agent, as preemption needs it."""

    run_id: str
    account_id: str
    agent_id: str
    gpu_ids: tuple[str, ...]
    priority: int = 0
    #: The run's manifest said `preemptible: false`.
    not_preemptible: bool = False
    #: Log position of its current attempt's RunAssigned: larger is younger.
    started_position: int = 0
    #: Already asked to stop (preempted, canceled, paused, stopped early): its GPUs are about to free.
    stopping: bool = False
    #: Asked to stop because it was preempted.
    preempted: bool = False

    @property
    def gpus(self) -> int:
        return len(self.gpu_ids)


@dataclass(frozen=True)
class Victim:
    run_id: str
    #: The waiting run that takes its GPUs.
    by_run_id: str
    #: FAIR_SHARE or PRIORITY.
    rule: str
    #: For a person: why this run stops.
    reason: str
    agent_id: str = ""


def fair_shares(accounts: Mapping[str, AccountState], demand: Mapping[str, int], pool_gpus: int) -> dict[str, float]:
    """Each account's fair share of the pool's GPUs: by quota weight, capped by demand and quota (water-filling).

    `demand` is what an account holds plus what its waiting runs want; accounts
    with no demand get nothing. An account with no plan (no quota) weighs as
    much as the whole pool.
    """
    share: dict[str, float] = {}
    caps: dict[str, float] = {}
    weights: dict[str, float] = {}
    for account_id, wanted in demand.items():
        if wanted <= 0:
            continue
        quota = accounts[account_id].gpu_quota if account_id in accounts else None
        caps[account_id] = float(min(wanted, quota)) if quota is not None else float(wanted)
        weights[account_id] = float(quota) if quota else float(max(pool_gpus, 1))
        share[account_id] = 0.0
    left = float(pool_gpus)
    open_ = {a for a in caps if caps[a] > 0}
    while open_ and left > 1e-9:
        total = sum(weights[a] for a in open_)
        capped = {a for a in open_ if caps[a] - share[a] <= left * weights[a] / total + 1e-9}
        if not capped:
            for a in open_:
                share[a] += left * weights[a] / total
            break
        for a in capped:
            left -= caps[a] - share[a]
            share[a] = caps[a]
        open_ -= capped
    return share


def _n(x: float) -> str:
    return str(round(x)) if abs(x - round(x)) < 1e-6 else f"{x:.1f}"


def choose_victims(
    waiting: Sequence[QueuedRun],
    running: Sequence[RunningRun],
    agents: Sequence[AgentState],
    accounts: Mapping[str, AccountState] | None = None,
    protected_accounts: Iterable[str] = (),
    queued_gpus: Mapping[str, int] | None = None,
) -> list[Victim]:
    """The runs to preempt so that waiting runs can start; [] when none should be.

    `waiting` are runs left waiting for capacity (not quota), `running` every
    run holding GPUs, `agents` those that take work, `accounts` plans (an
    account missing is unlimited), `protected_accounts` those whose policy
    forbids preempting their runs, `queued_gpus` the GPUs each account's queue
    wants in all (for fair shares; defaults to `waiting`'s). Nothing passed in
    is changed.
    """
    accounts = accounts or {}
    if any(r.stopping and r.preempted for r in running):
        return []  # earlier victims are still stopping: their GPUs go to their takers first
    protected = set(protected_accounts)
    pool = sum(len(a.gpus) for a in agents)
    in_use: dict[str, int] = {}
    for r in running:
        in_use[r.account_id] = in_use.get(r.account_id, 0) + r.gpus
    wanted: dict[str, int] = {}
    if queued_gpus is None:
        for q in waiting:
            wanted[q.account_id] = wanted.get(q.account_id, 0) + q.gpus
    else:
        wanted.update(queued_gpus)
    demand = {a: in_use.get(a, 0) + wanted.get(a, 0) for a in set(in_use) | set(wanted)}
    fair = fair_shares(accounts, demand, pool)

    candidates = {r.run_id: r for r in running if not r.stopping and r.gpus > 0}
    busy = {g for r in running for g in r.gpu_ids}
    # Free GPUs of each agent that no taker of this decision has claimed yet.
    free = {a.agent_id: [g for g in a.gpus if g.gpu_id not in busy] for a in agents if not a.draining}
    by_id = {a.agent_id: a for a in agents}
    # Free slots of each agent: a run needs one besides its GPUs.
    slots = {a: by_id[a].slots - sum(1 for r in running if r.agent_id == a) for a in free}
    victims: list[Victim] = []
    # Accounts furthest below their fair share first, then each account's queue order.
    order = sorted(
        (q for q in waiting if q.gpus > 0),
        key=lambda q: (in_use.get(q.account_id, 0) / max(fair.get(q.account_id, 0.0), 1e-9), *queue_order(q)),
    )
    for run in order:
        home = _fits_free(run, free, slots, by_id)
        if home is not None:
            # It fits on capacity nobody has claimed: the scheduler places it there, so it takes nothing
            # from anyone, and those GPUs are no longer free for the next taker.
            _claim(run, free, home)
            slots[home] -= 1
            in_use[run.account_id] = in_use.get(run.account_id, 0) + run.gpus
            continue
        picked = _pick(run, candidates, free, slots, by_id, in_use, fair, accounts, protected)
        if picked is None:
            continue
        agent_id, chosen, rule = picked
        for v in chosen:
            victims.append(Victim(v.run_id, run.run_id, rule, _reason(rule, run, v, in_use, fair), agent_id))
        for v in chosen:
            del candidates[v.run_id]
            in_use[v.account_id] -= v.gpus
        in_use[run.account_id] = in_use.get(run.account_id, 0) + run.gpus
        slots[agent_id] += len(chosen) - 1
        # What the taker will hold on that agent is no longer free for the next taker.
        _claim(run, free, agent_id)
    return victims


def _usable(run: QueuedRun, agent: AgentState) -> bool:
    """Could `run` ever start on `agent` (framework, labels, enough GPUs of its model)?"""
    if not runs_framework(run, agent) or not all(agent.labels.get(k) == v for k, v in run.labels.items()):
        return False
    return sum(1 for g in agent.gpus if model_matches(run.gpu_model, g)) >= run.gpus


def _fits_free(
    run: QueuedRun, free: Mapping[str, list[Gpu]], slots: Mapping[str, int], agents: Mapping[str, AgentState]
) -> str | None:
    """An agent whose unclaimed free GPUs and slots hold `run` now, or None."""
    for agent_id, free_gpus in free.items():
        if slots[agent_id] < 1 or not _usable(run, agents[agent_id]):
            continue
        if sum(1 for g in free_gpus if model_matches(run.gpu_model, g)) >= run.gpus:
            return agent_id
    return None


def _claim(run: QueuedRun, free: dict[str, list[Gpu]], agent_id: str) -> None:
    """Take `run`'s GPUs on `agent_id` out of the free ones."""
    usable = [g for g in free[agent_id] if model_matches(run.gpu_model, g)]
    taken = {g.gpu_id for g in usable[: run.gpus]}
    free[agent_id] = [g for g in free[agent_id] if g.gpu_id not in taken]


def _pick(
    run: QueuedRun,
    candidates: Mapping[str, RunningRun],
    free: Mapping[str, list[Gpu]],
    slots: Mapping[str, int],
    agents: Mapping[str, AgentState],
    in_use: Mapping[str, int],
    fair: Mapping[str, float],
    accounts: Mapping[str, AccountState],
    protected: set[str],
) -> tuple[str, list[RunningRun], str] | None:
    """The agent and victims that make room for `run`, with the rule; None when no rule allows it."""
    mine = run.account_id
    below = in_use.get(mine, 0) + run.gpus <= fair.get(mine, 0.0) + 1e-9
    quota = accounts[mine].gpu_quota if mine in accounts else None
    within_quota = quota is None or in_use.get(mine, 0) + run.gpus <= quota
    best: tuple[tuple[int, int, int, int, str], str, list[RunningRun], str] | None = None
    for agent_id, free_gpus in free.items():
        agent = agents[agent_id]
        if not _usable(run, agent):
            continue
        have = sum(1 for g in free_gpus if model_matches(run.gpu_model, g))
        if have >= run.gpus and slots[agent_id] >= 1:
            continue  # it fits already: the scheduler places it (or keeps the capacity for it)
        here = [c for c in candidates.values() if c.agent_id == agent_id and not c.not_preemptible]
        here = [c for c in here if c.account_id not in protected]
        for rule in (PRIORITY, FAIR_SHARE):
            if rule == PRIORITY:
                eligible = [c for c in here if c.account_id == mine and c.priority < run.priority]
            elif below and within_quota:
                eligible = [c for c in here if c.account_id != mine]
            else:
                continue
            models = {g.gpu_id: g for g in agent.gpus}
            chosen = _fewest(run, eligible, have, slots[agent_id], in_use, fair, rule, models)
            if chosen is None:
                continue
            taken = sum(c.gpus for c in chosen)
            key = (
                taken,
                len(chosen),
                0 if rule == PRIORITY else 1,
                max(c.priority for c in chosen),
                agent_id,
            )
            if best is None or key < best[0]:
                best = (key, agent_id, chosen, rule)
    return None if best is None else (best[1], best[2], best[3])


def _fewest(
    run: QueuedRun,
    eligible: Sequence[RunningRun],
    have: int,
    free_slots: int,
    in_use: Mapping[str, int],
    fair: Mapping[str, float],
    rule: str,
    models: Mapping[str, Gpu],
) -> list[RunningRun] | None:
    """Victims on one agent whose GPUs (with the `have` free ones) hold `run`: lowest priority and youngest first.

    Under fair-share no victim's account may fall below its fair share; under priority
    the account (victims and taker alike) may not either, unless it already was.
    GPUs of another model than the run asks for do not help, so such runs are
    never chosen. The run needs a slot too: `free_slots` and one per victim.
    """

    def helps(c: RunningRun) -> int:
        return sum(1 for g in c.gpu_ids if model_matches(run.gpu_model, models.get(g, Gpu(g))))

    eligible = [c for c in eligible if helps(c) > 0]
    ordered = sorted(eligible, key=lambda c: (c.priority, -c.started_position, c.run_id))
    left = dict(in_use)
    chosen: list[RunningRun] = []
    got = have

    def enough(gpus: int, victims: int) -> bool:
        return gpus >= run.gpus and free_slots + victims >= 1

    for c in ordered:
        if enough(got, len(chosen)):
            break
        if rule == FAIR_SHARE and left.get(c.account_id, 0) - c.gpus < fair.get(c.account_id, 0.0) - 1e-9:
            continue
        if rule == PRIORITY:
            # A swap inside one account must not leave it below its fair share (a big victim for a small
            # run frees GPUs the account then lacks, and its victim would take them back by fair share).
            after = left.get(c.account_id, 0) - c.gpus + run.gpus
            if after < min(in_use.get(c.account_id, 0), fair.get(c.account_id, 0.0)) - 1e-9:
                continue
        chosen.append(c)
        left[c.account_id] = left.get(c.account_id, 0) - c.gpus
        got += helps(c)
    if not enough(got, len(chosen)):
        return None
    # Drop victims not needed after all (a big one chosen late may cover small ones chosen first).
    for c in [*reversed(chosen), *chosen]:
        if c in chosen and enough(got - helps(c), len(chosen) - 1):
            chosen.remove(c)
            got -= helps(c)
    return chosen


def _reason(
    rule: str,
    run: QueuedRun,
    victim: RunningRun,
    in_use: Mapping[str, int],
    fair: Mapping[str, float],
) -> str:
    if rule == PRIORITY:
        return (
            f"run {run.run_id} of account {run.account_id} has priority {run.priority}, "
            f"higher than this run's {victim.priority}"
        )
    a, b = victim.account_id, run.account_id
    held = in_use.get(a, 0)
    b_now = in_use.get(b, 0)
    return (
        f"account {b} is below its fair share ({b_now} of {_n(fair.get(b, 0.0))} GPUs); "
        f"account {a} holds {held} of its fair {_n(fair.get(a, 0.0))}"
    )
