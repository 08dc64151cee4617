"""Placement by framework version and runtime: a run goes only to an agent that can run its code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.server.domain.scheduling import (
    CONTAINER_RUNTIME,
    AgentState,
    FrameworkOffer,
    QueuedRun,
    can_ever_place,
    offers,
    runs_framework,
    schedule,
    version_matches,
)


def agent(agent_id: str, *offered: tuple[str, str], runtime: str = "process", **kw: object) -> AgentState:
    frameworks = frozenset(FrameworkOffer(n, v) for n, v in offered)
    return AgentState(agent_id, 2, frameworks=frameworks, runtime=runtime, **kw)  # type: ignore[arg-type]


def run(run_id: str, framework: str = "pytorch", version: str = "", image: str = "", position: int = 0) -> QueuedRun:
    return QueuedRun(
        run_id, "a", 0, framework=framework, framework_version=version, image=image, queued_position=position
    )


@pytest.mark.parametrize(
    ("wanted", "offered", "matches"),
    [
        ("", "", True),
        ("", "2.13", True),
        ("2.13", "2.13", True),
        ("2.13", "2.13.1", True),
        ("2.13", "2.13.0+cpu", True),
        ("2.13.0", "2.13.0+cu124", True),
        ("2.13", "", False),
        ("2.13", "2.130", False),
        ("2.13", "2.1", False),
        ("2.13.1", "2.13", False),
        ("2.13", "12.13", False),
    ],
)
def test_a_version_matches_itself_and_its_patch_releases(wanted: str, offered: str, matches: bool) -> None:
    assert version_matches(wanted, offered) is matches


def test_a_versioned_run_goes_only_to_an_agent_offering_that_version() -> None:
    agents = [
        agent("old", ("pytorch", "2.12.0")),
        agent("bare", ("pytorch", "")),
        agent("new", ("pytorch", "2.13.1"), ("python", "3.11")),
    ]
    decision = schedule([run("r", version="2.13")], agents)
    assert [(p.run_id, p.agent_id) for p in decision.placements] == [("r", "new")]


def test_a_run_without_a_version_takes_any_version_of_its_framework() -> None:
    for offered in ("", "2.12.0", "2.13"):
        decision = schedule([run("r")], [agent("only", ("pytorch", offered))])
        assert [p.agent_id for p in decision.placements] == ["only"], offered


def test_a_run_with_its_own_image_goes_only_to_a_container_agent_whatever_it_offers() -> None:
    agents = [agent("proc", ("pytorch", "2.13")), agent("ctr", ("python", "3.11"), runtime=CONTAINER_RUNTIME)]
    decision = schedule([run("r", version="2.13", image="localhost/team/train:1")], agents)
    assert [p.agent_id for p in decision.placements] == ["ctr"]
    # Without the image the same run needs pytorch 2.13: only the process agent has it.
    decision = schedule([run("r", version="2.13")], agents)
    assert [p.agent_id for p in decision.placements] == ["proc"]


def test_a_version_nobody_offers_waits_saying_what_agents_offer() -> None:
    agents = [agent("a1", ("pytorch", "2.13"), ("python", "3.11")), agent("a2", ("pytorch", "2.13"))]
    decision = schedule([run("r", version="2.99"), run("s", version="2.99", position=1)], agents)
    assert decision.placements == [] and decision.reservations == {}
    expected = "framework.version: no agent offers framework pytorch 2.99 (agents offer: pytorch 2.13, python 3.11)"
    # Both say why, and neither is "behind" the other: nothing it waits for will ever come.
    assert [w.reason for w in decision.waiting] == [expected, expected]
    assert can_ever_place(run("r", version="2.99"), agents) == expected


def test_an_unknown_name_is_still_named_before_its_version() -> None:
    reason = can_ever_place(run("r", framework="tensorflow", version="2.21"), [agent("a", ("pytorch", "2.13"))])
    assert reason is not None and reason.startswith("framework.name:") and "'tensorflow'" in reason


def test_an_image_without_a_container_agent_waits_naming_the_image() -> None:
    agents = [agent("proc", ("pytorch", "2.13"))]
    reason = can_ever_place(run("r", image="localhost/team/train:1"), agents)
    assert reason is not None and reason.startswith("image:")
    assert "localhost/team/train:1" in reason and "container" in reason and "process" in reason
    [w] = schedule([run("r", image="localhost/team/train:1")], agents).waiting
    assert w.reason == reason


def test_labels_are_checked_among_the_agents_that_can_run_the_code() -> None:
    agents = [agent("ctr", runtime=CONTAINER_RUNTIME, labels={"pool": "x"})]
    labelled = QueuedRun("r", "a", 0, labels={"pool": "y"}, image="localhost/x:1")
    reason = can_ever_place(labelled, agents)
    assert reason is not None and reason.startswith("resources.labels:") and "containers" in reason


def test_with_no_agent_registered_nothing_is_refused() -> None:
    assert can_ever_place(run("r", version="2.99"), []) is None
    assert can_ever_place(run("r", image="localhost/x:1"), []) is None


def test_agents_default_to_version_less_python_on_processes() -> None:
    state = AgentState("a", 1)
    assert state.frameworks == offers("python") and state.runtime == "process"
    assert runs_framework(run("r", framework="python"), state)
    assert not runs_framework(run("r", framework="python", version="3.11"), state)


# -- properties ------------------------------------------------------------------------------

NAMES = ("pytorch", "python")
VERSIONS = ("", "2.13", "2.13.1", "2.12", "3.11")


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[QueuedRun], list[AgentState]]:
    agents = []
    for i in range(draw(st.integers(0, 4))):
        offered = draw(st.frozensets(st.tuples(st.sampled_from(NAMES), st.sampled_from(VERSIONS)), max_size=3))
        agents.append(
            AgentState(
                f"agent{i}",
                draw(st.integers(1, 3)),
                frameworks=frozenset(FrameworkOffer(n, v) for n, v in offered),
                runtime=draw(st.sampled_from(("process", CONTAINER_RUNTIME))),
                draining=draw(st.booleans()),
            )
        )
    queue = [
        QueuedRun(
            f"r{i}",
            draw(st.sampled_from("ab")),
            0,
            framework=draw(st.sampled_from(NAMES)),
            framework_version=draw(st.sampled_from(VERSIONS)),
            image=draw(st.sampled_from(("", "localhost/x:1"))),
            queued_position=i,
        )
        for i in range(draw(st.integers(0, 12)))
    ]
    return queue, agents


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_every_placement_can_run_the_runs_code_and_the_rest_say_why(
    world: tuple[list[QueuedRun], list[AgentState]],
) -> None:
    queue, agents = world
    decision = schedule(queue, agents)
    by_agent = {a.agent_id: a for a in agents}
    by_run = {r.run_id: r for r in queue}
    for p in decision.placements:
        r, a = by_run[p.run_id], by_agent[p.agent_id]
        assert runs_framework(r, a) and not a.draining
        if r.image:
            assert a.runtime == CONTAINER_RUNTIME
        else:
            assert any(o.name == r.framework and version_matches(r.framework_version, o.version) for o in a.frameworks)
    waiting = decision.waiting_by_run()
    for r in queue:
        if agents and not any(runs_framework(r, a) for a in agents):
            assert r.run_id in waiting
            assert waiting[r.run_id].reason.startswith(("framework.name:", "framework.version:", "image:"))
            assert waiting[r.run_id].reason == can_ever_place(r, agents)


def test_each_waiting_image_run_names_its_own_image() -> None:
    agents = [agent("proc", ("pytorch", "2.13"))]
    decision = schedule([run("a", image="localhost/a:1"), run("b", image="localhost/b:1", position=1)], agents)
    reasons = {w.run_id: w.reason for w in decision.waiting}
    assert "localhost/a:1" in reasons["a"] and "localhost/b:1" in reasons["b"]


def test_a_fleet_of_many_versions_is_summed_up_not_listed_in_full() -> None:
    agents = [agent(f"a{i}", ("pytorch", f"2.{i}"), ("python", "3.11")) for i in range(30)]
    reason = can_ever_place(run("r", version="2.99"), agents)
    assert reason is not None and reason.endswith(", ... (31 in all))")
    assert "pytorch 2.0" in reason and "python 3.11" not in reason, "the run's own framework comes first"
