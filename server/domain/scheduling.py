"""Scheduling policy: which queued runs start now, where, and why the others wait. Pure.

One decision looks at the whole queue, every agent's free capacity and every
account's plan, and returns placements plus, for each run left waiting, a
reason a person can read and its 1-based place in its account's queue. The
scheduler applies it; every replica can run it over the read models to explain
the queue (`show`, `list`, WatchRun) because it depends on nothing else.

The rules, in the order they bite:

* **Admission (quota).** An account's GPU runs start only while the GPUs its
  runs hold stay within its ``gpu_quota``; its CPU-only runs only while they
  stay within ``run_quota`` (0: no cap). An account the caller knows no plan
  for is unlimited.
* **Order within an account.** Higher priority first, then the position at
  which the run was (re)queued: submission order.
* **Order across accounts: weighted fair share.** The next run to consider is
  the head of the account with the lowest GPUs-in-use / quota, recomputed
  after every placement, so two accounts with quotas 4 and 2 split contended
  GPUs about 2:1. (An unlimited account weighs as much as the whole pool.)
* **Placement.** All of a run's GPUs on one agent that offers its framework
  (and its version, when the run names one: "2.13" matches an agent's "2.13"
  and "2.13.x"; a run with its own image needs a container agent, whatever
  frameworks it offers), has every label it asks for, is not draining, and
  has enough free GPUs of the requested model (matched on the short model,
  e.g. "H100", or the full name). Among the agents that fit, the tightest
  fit wins, which keeps large holes for large runs.
* **No starvation, careful backfill.** When an account's head run fits nowhere
  right now, it gets a reservation: the agent that could hold it soonest (the
  one with the most free matching GPUs already) keeps those free GPUs and a
  slot for it, and the account's quota headroom keeps the head's share.
  Later runs, of any account, may start only on capacity nobody reserved and
  within what quota is left, so backfill never delays the head. The reserved
  agent's free GPUs can only grow while the reservation holds, so the head
  starts once enough of that agent's runs end, however many small runs wait
  behind it.

A run that no agent could ever hold (more GPUs than any agent has, a model no
agent has, a framework, framework version or label nobody offers, its own
image and no container agent) waits with that reason and reserves nothing;
`can_ever_place` turns the same test into a refusal at submit time.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# -- inputs -------------------------------------------------------------------

#: The runtime that runs commands in containers: the only one that can run a run's own image.
CONTAINER_RUNTIME = "container"


@dataclass(frozen=True, order=True)
class FrameworkOffer:
    """A framework an agent runs: a container agent's framework image, or a process agent's interpreter."""

    name: str
    #: "" when the agent does not know it (a process agent's interpreter without a declared version).
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name} {self.version}".strip()


def offers(*names: str) -> frozenset[FrameworkOffer]:
    """Version-less offers of these framework names."""
    return frozenset(FrameworkOffer(name) for name in names)


@dataclass(frozen=True)
class QueuedRun:
    """A queued run as the policy needs it."""

    run_id: str
    account_id: str = ""
    gpus: int = 0
    #: Short model ("H100") or full name; "" for any model.
    gpu_model: str = ""
    #: Agent labels the run needs, all of them.
    labels: Mapping[str, str] = field(default_factory=dict)
    framework: str = "python"
    priority: int = 0
    #: Log position at which the run was (re)queued: submission order.
    queued_position: int = 0
    #: The framework version the run needs ("2.13"); "" for any version.
    framework_version: str = ""
    #: The run's own image; "" for the framework's. Non-empty: only container agents can run it.
    image: str = ""
    #: The manifest said `preemptible: false` (what preemption needs once the run holds GPUs).
    not_preemptible: bool = False


@dataclass(frozen=True)
class Gpu:
    gpu_id: str
    #: Short model, e.g. "H100"; "" when the agent did not say.
    model: str = ""
    #: Full device name, e.g. "NVIDIA H100 80GB HBM3".
    name: str = ""


@dataclass(frozen=True)
class AgentState:
    """An agent as the scheduler sees it: what it has and what is taken."""

    agent_id: str
    slots: int
    #: Every GPU of the agent, in the order runs should get them.
    gpus: tuple[Gpu, ...] = ()
    #: GPU ids that runs hold now.
    busy_gpu_ids: frozenset[str] = frozenset()
    #: Runs holding slots now.
    running: int = 0
    frameworks: frozenset[FrameworkOffer] = offers("python")
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Finishes its runs but takes no new one.
    draining: bool = False
    #: "process" or "container" (CONTAINER_RUNTIME).
    runtime: str = "process"


@dataclass(frozen=True)
class AccountState:
    account_id: str
    #: Concurrent GPUs the account's runs may hold; None: no limit.
    gpu_quota: int | None = None
    #: Concurrent CPU-only runs; 0: no limit.
    run_quota: int = 0
    gpus_in_use: int = 0
    #: CPU-only runs holding slots now.
    runs_in_use: int = 0


# -- outputs ------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    run_id: str
    agent_id: str
    gpu_ids: tuple[str, ...]
    #: Short model of the GPUs given ("" for a CPU-only run): what billing records.
    gpu_model: str = ""


@dataclass(frozen=True)
class Waiting:
    run_id: str
    reason: str
    #: 1-based place among the account's runs still waiting, in the account's queue order.
    position: int


@dataclass
class Decision:
    placements: list[Placement]
    waiting: list[Waiting]
    #: Run id -> the agent keeping capacity for it.
    reservations: dict[str, str]

    def waiting_by_run(self) -> dict[str, Waiting]:
        return {w.run_id: w for w in self.waiting}


# -- matching -----------------------------------------------------------------


#: Reasons that say the run can never start as things are; no "behind N runs" for those.
NEVER_PREFIXES = ("framework", "image", "resources", "no agent is connected")


def model_matches(wanted: str, gpu: Gpu) -> bool:
    if not wanted:
        return True
    w = wanted.strip().lower()
    return w in (gpu.model.lower(), gpu.name.lower())


def version_matches(wanted: str, offered: str) -> bool:
    """Whether an agent's framework version serves a run's: "" wants any; "2.13" takes 2.13, 2.13.1, 2.13+cpu."""
    if not wanted:
        return True
    return offered == wanted or offered.startswith((f"{wanted}.", f"{wanted}+"))


def runs_framework(run: QueuedRun, agent: AgentState) -> bool:
    """Whether the agent can run the run's code: its image (a container agent), or its framework and version."""
    if run.image:
        return agent.runtime == CONTAINER_RUNTIME
    return any(o.name == run.framework and version_matches(run.framework_version, o.version) for o in agent.frameworks)


def _wanted(run: QueuedRun) -> str:
    return f"{run.framework} {run.framework_version}".strip()


#: Offers a refusal lists at most: a fleet of mixed images must not make the message a page.
_MAX_OFFERS_SHOWN = 12


def _offered(run: QueuedRun, agents: Sequence[AgentState]) -> str:
    """What agents offer, the run's own framework first: 'pytorch 2.12, pytorch 2.13, python 3.11'."""
    every = sorted({o for a in agents for o in a.frameworks}, key=lambda o: (o.name != run.framework, o))
    shown = ", ".join(str(o) for o in every[:_MAX_OFFERS_SHOWN])
    return shown + (f", ... ({len(every)} in all)" if len(every) > _MAX_OFFERS_SHOWN else "")


def _labels_match(wanted: Mapping[str, str], agent: AgentState) -> bool:
    return all(agent.labels.get(k) == v for k, v in wanted.items())


def _fits_statically(run: QueuedRun, agent: AgentState) -> bool:
    """Could this agent hold the run if it were idle?"""
    if not runs_framework(run, agent) or not _labels_match(run.labels, agent) or agent.slots < 1:
        return False
    return run.gpus == 0 or sum(1 for g in agent.gpus if model_matches(run.gpu_model, g)) >= run.gpus


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _gpus_text(run: QueuedRun) -> str:
    model = f" of model {run.gpu_model}" if run.gpu_model else ""
    return f"{_plural(run.gpus, 'GPU')}{model}"


def can_ever_place(run: QueuedRun, agents: Sequence[AgentState]) -> str | None:
    """None when some agent could hold the run once idle; else why none ever could.

    With no agent known at all nothing can be said yet (agents may still be
    starting): None, and the run waits.
    """
    if not agents:
        return None
    if any(_fits_statically(run, a) for a in agents):
        return None
    if run.image:
        offering = [a for a in agents if a.runtime == CONTAINER_RUNTIME]
        if not offering:
            runtimes = ", ".join(sorted({a.runtime or "process" for a in agents}))
            return (
                f"image: no container agent is registered to run image {run.image!r} "
                f"(agents run commands as: {runtimes}; start one with runyard agent --runtime container)"
            )
        what = "running containers"
    else:
        named = [a for a in agents if any(o.name == run.framework for o in a.frameworks)]
        if not named:
            names = sorted({o.name for a in agents for o in a.frameworks})
            return f"framework.name: no agent offers framework {run.framework!r} (agents offer: {', '.join(names)})"
        offering = [a for a in named if runs_framework(run, a)]
        if not offering:
            offered = _offered(run, agents)
            return f"framework.version: no agent offers framework {_wanted(run)} (agents offer: {offered})"
        what = f"offering {_wanted(run)}"
    labelled = [a for a in offering if _labels_match(run.labels, a)]
    if not labelled:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(run.labels.items()))
        return f"resources.labels: no agent {what} has the labels {wanted}"
    if run.gpu_model and not any(model_matches(run.gpu_model, g) for a in labelled for g in a.gpus):
        models = sorted({g.model for a in labelled for g in a.gpus if g.model})
        known = f"agents have: {', '.join(models)}" if models else "no agent has GPUs"
        return f"resources.gpu_model: no agent has GPUs of model {run.gpu_model!r} ({known})"
    largest = max(sum(1 for g in a.gpus if model_matches(run.gpu_model, g)) for a in labelled)
    if largest == 0:
        return f"resources.gpus: the run asks for {_gpus_text(run)} but no agent has GPUs"
    return (
        f"resources.gpus: the run asks for {_gpus_text(run)} on one agent, "
        f"but the largest agent has {_plural(largest, 'GPU')}{' of that model' if run.gpu_model else ''}"
    )


def quota_refusal(run: QueuedRun, account: AccountState | None) -> str | None:
    """Why the account could never admit this run whatever else ends (None when it could)."""
    if account is None or run.gpus == 0 or account.gpu_quota is None:
        return None
    if run.gpus > account.gpu_quota:
        return (
            f"resources.gpus: each run asks for {_plural(run.gpus, 'GPU')} but account {account.account_id}'s "
            f"quota is {_plural(account.gpu_quota, 'GPU')}"
        )
    return None


# -- the decision ---------------------------------------------------------------


class _Agent:
    """Mutable capacity of one agent during a decision."""

    __slots__ = ("free", "free_slots", "reserved", "reserved_slots", "state")

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.free: list[Gpu] = [g for g in state.gpus if g.gpu_id not in state.busy_gpu_ids]
        self.free_slots = state.slots - state.running
        #: GPU ids and slots kept for a reserved head run.
        self.reserved: set[str] = set()
        self.reserved_slots = 0

    def usable(self, model: str) -> list[Gpu]:
        return [g for g in self.free if g.gpu_id not in self.reserved and model_matches(model, g)]

    def usable_slots(self) -> int:
        return self.free_slots - self.reserved_slots


class _Account:
    __slots__ = ("blocked_run", "cursor", "queue", "reserved_gpus", "reserved_runs", "state", "weight")

    def __init__(self, state: AccountState, queue: list[QueuedRun], pool_gpus: int) -> None:
        self.state = state
        self.queue = queue
        self.cursor = 0
        quota = state.gpu_quota
        self.weight = float(quota) if quota else float(max(pool_gpus, 1))
        #: Quota kept for the account's blocked head.
        self.reserved_gpus = 0
        self.reserved_runs = 0
        #: The first run of the account that had to wait (it holds the reservation).
        self.blocked_run: str | None = None

    def share(self) -> tuple[float, float]:
        s = self.state
        return (s.gpus_in_use / self.weight, float(s.runs_in_use))

    def quota_block(self, run: QueuedRun) -> str | None:
        s = self.state
        if run.gpus > 0:
            if s.gpu_quota is not None and s.gpus_in_use + self.reserved_gpus + run.gpus > s.gpu_quota:
                # Name the reservation only when it alone is what stops this run.
                kept = self.reserved_gpus and s.gpus_in_use + run.gpus <= s.gpu_quota
                held = f", {self.reserved_gpus} more kept for an earlier run" if kept else ""
                return f"quota: account {s.account_id} uses {s.gpus_in_use} of {_plural(s.gpu_quota, 'GPU')}{held}"
            return None
        if s.run_quota and s.runs_in_use + self.reserved_runs + 1 > s.run_quota:
            kept = self.reserved_runs and s.runs_in_use + 1 <= s.run_quota
            held = f", {self.reserved_runs} more kept for an earlier run" if kept else ""
            return f"quota: account {s.account_id} runs {s.runs_in_use} of {_plural(s.run_quota, 'CPU-only run')}{held}"
        return None

    def take(self, run: QueuedRun) -> None:
        s = self.state
        if run.gpus > 0:
            self.state = AccountState(s.account_id, s.gpu_quota, s.run_quota, s.gpus_in_use + run.gpus, s.runs_in_use)
        else:
            self.state = AccountState(s.account_id, s.gpu_quota, s.run_quota, s.gpus_in_use, s.runs_in_use + 1)


def queue_order(run: QueuedRun) -> tuple[int, int, str]:
    """An account's queue order: higher priority first, then (re)queue order."""
    return (-run.priority, run.queued_position, run.run_id)


def schedule(
    queue: Iterable[QueuedRun],
    agents: Sequence[AgentState],
    accounts: Mapping[str, AccountState] | None = None,
    promised: Mapping[str, str] | None = None,
) -> Decision:
    """Decide which queued runs start now and where; explain every other one.

    `agents` are those that may take work or will again (draining ones are
    never given runs but still count for "could this ever fit"); `accounts`
    carry plans and current use, and an account missing there is unlimited
    and holds nothing. `promised` maps a waiting run to the agent whose runs
    were preempted for it: when it must wait, it reserves that agent, so the
    GPUs its victims free are kept for it. Nothing passed in is changed.
    """
    promised = promised or {}
    accounts = accounts or {}
    by_account: dict[str, list[QueuedRun]] = defaultdict(list)
    for run in queue:
        by_account[run.account_id].append(run)
    pool_gpus = sum(len(a.gpus) for a in agents)
    open_agents = [_Agent(a) for a in agents if not a.draining]
    states = {
        account_id: _Account(
            accounts.get(account_id) or AccountState(account_id), sorted(runs, key=queue_order), pool_gpus
        )
        for account_id, runs in by_account.items()
    }

    placements: list[Placement] = []
    placed: set[str] = set()
    reasons: dict[str, str] = {}
    reservations: dict[str, str] = {}
    # Memos for the rest of this decision: capacity only shrinks while it runs.
    ever_fits: dict[tuple[object, ...], str | None] = {}
    no_room: set[tuple[object, ...]] = set()

    heap: list[tuple[tuple[float, float], int, str]] = []
    for account in states.values():
        heapq.heappush(heap, (account.share(), account.queue[0].queued_position, account.state.account_id))

    while heap:
        _, _, account_id = heapq.heappop(heap)
        account = states[account_id]
        run = account.queue[account.cursor]
        account.cursor += 1
        agent = _consider(run, account, open_agents, agents, ever_fits, no_room, reasons, reservations, promised)
        if agent is not None:
            gpus = _take(run, agent)
            account.take(run)
            placements.append(Placement(run.run_id, agent.state.agent_id, tuple(g.gpu_id for g in gpus), _model(gpus)))
            placed.add(run.run_id)
        if account.cursor < len(account.queue):
            nxt = account.queue[account.cursor]
            heapq.heappush(heap, (account.share(), nxt.queued_position, account_id))

    waiting: list[Waiting] = []
    for account in states.values():
        position = 0
        for run in account.queue:
            if run.run_id in placed:
                continue
            position += 1
            reason = reasons[run.run_id]
            if position > 1 and reason.startswith("quota"):
                reason = f"{reason}; behind {_plural(position - 1, 'run')}"
            elif position > 1 and not reason.startswith(NEVER_PREFIXES):
                reason = f"behind {_plural(position - 1, 'run')}; {reason}"
            waiting.append(Waiting(run.run_id, reason, position))
    return Decision(placements, waiting, reservations)


def _signature(run: QueuedRun) -> tuple[object, ...]:
    return (
        run.gpus,
        run.gpu_model.lower(),
        run.framework,
        run.framework_version,
        # The image itself, not only whether there is one: a waiting run's reason names it.
        run.image,
        tuple(sorted(run.labels.items())),
    )


def _consider(
    run: QueuedRun,
    account: _Account,
    open_agents: list[_Agent],
    all_agents: Sequence[AgentState],
    ever_fits: dict[tuple[object, ...], str | None],
    no_room: set[tuple[object, ...]],
    reasons: dict[str, str],
    reservations: dict[str, str],
    promised: Mapping[str, str],
) -> _Agent | None:
    """The agent `run` starts on now; or None, having recorded why it waits (and maybe reserved for it)."""
    signature = _signature(run)
    if signature not in ever_fits:
        ever_fits[signature] = can_ever_place(run, all_agents) if all_agents else "no agent is connected"
    never = ever_fits[signature]
    if never is not None:
        reasons[run.run_id] = never
        return None
    blocked = account.quota_block(run)
    if blocked is not None:
        reasons[run.run_id] = blocked
        _keep_quota(run, account)
        return None
    if signature not in no_room:
        agent = _best_agent(run, open_agents)
        if agent is not None:
            return agent
        no_room.add(signature)
    first_blocked = account.blocked_run is None
    _keep_quota(run, account)
    if first_blocked:
        agent = _reserve(run, open_agents, promised.get(run.run_id))
        if agent is not None:
            reservations[run.run_id] = agent.state.agent_id
    reasons[run.run_id] = _capacity_reason(run, open_agents, reservations.get(run.run_id))
    return None


def _keep_quota(run: QueuedRun, account: _Account) -> None:
    """The account's first waiting run keeps its share of the quota: runs behind it may not eat it."""
    if account.blocked_run is not None:
        return
    account.blocked_run = run.run_id
    if run.gpus > 0:
        account.reserved_gpus = run.gpus
    else:
        account.reserved_runs = 1


def _best_agent(run: QueuedRun, agents: list[_Agent]) -> _Agent | None:
    best: _Agent | None = None
    best_key: tuple[int, int, str] | None = None
    for agent in agents:
        s = agent.state
        if agent.usable_slots() < 1 or not runs_framework(run, s) or not _labels_match(run.labels, s):
            continue
        usable = len(agent.usable(run.gpu_model))
        if usable < run.gpus:
            continue
        # GPU runs: the tightest fit keeps large holes for large runs. CPU-only runs: the
        # hosts with the fewest free GPUs, so GPU hosts keep their slots for GPU runs.
        key = (usable, -agent.usable_slots(), s.agent_id)
        if best_key is None or key < best_key:
            best, best_key = agent, key
    return best


def _take(run: QueuedRun, agent: _Agent) -> list[Gpu]:
    gpus = agent.usable(run.gpu_model)[: run.gpus] if run.gpus else []
    taken = {g.gpu_id for g in gpus}
    agent.free = [g for g in agent.free if g.gpu_id not in taken]
    agent.free_slots -= 1
    return gpus


def _reserve(run: QueuedRun, agents: list[_Agent], promised: str | None = None) -> _Agent | None:
    """Keep capacity for a head run on the agent likely to hold it soonest: the one closest to fitting,
    or the one whose runs were preempted for it."""
    candidates = [a for a in agents if _fits_statically(run, a.state)]
    if not candidates:
        return None
    chosen = [a for a in candidates if a.state.agent_id == promised]
    agent = (
        chosen[0]
        if chosen
        else max(candidates, key=lambda a: (len(a.usable(run.gpu_model)), a.usable_slots(), _neg(a.state.agent_id)))
    )
    keep = agent.usable(run.gpu_model)[: run.gpus]
    agent.reserved.update(g.gpu_id for g in keep)
    # A slot too, even one still taken: the next one freed there is the head's.
    agent.reserved_slots += 1
    return agent


def _neg(text: str) -> tuple[int, ...]:
    """Reverse string order inside max(): the lowest agent id wins ties."""
    return tuple(-ord(c) for c in text)


def _capacity_reason(run: QueuedRun, agents: list[_Agent], reserved_on: str | None) -> str:
    if not agents:
        what = "no agent takes new runs (all are draining or silent)"
    elif run.gpus == 0:
        what = "no free slot"
    elif run.gpus == 1:
        what = f"no free GPU{f' of model {run.gpu_model}' if run.gpu_model else ''}"
    else:
        what = f"waiting for {_gpus_text(run)} free on one agent"
    if reserved_on is not None:
        what += f" (agent {reserved_on} keeps its free capacity for it)"
    return what


def _model(gpus: Sequence[Gpu]) -> str:
    return ",".join(sorted({g.model for g in gpus if g.model}))
