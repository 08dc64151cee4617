"""A control-plane restart mid-experiment: a searcher rebuilt from the logged inputs decides as if never stopped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.server.domain.searchers import Decision, feed, replay
from tests.unit.domain.searchers.arbitrary import ACTIONS, Action, Setup, concrete_inputs, setups
from tests.unit.domain.searchers.scenarios import Scenario, drive, scenarios


@settings(max_examples=200, deadline=None)
@given(st.booleans().flatmap(setups), ACTIONS, st.data())
def test_a_restart_anywhere_decides_the_same(setup: Setup, actions: list[Action], data: st.DataObject) -> None:
    inputs = concrete_inputs(setup.build, actions)
    cut = data.draw(st.integers(0, len(inputs)), label="restart after this many inputs")

    uninterrupted = setup.build()
    made = [feed(uninterrupted, item) for item in inputs]

    restarted = setup.build()
    replayed = replay(restarted, inputs[:cut])
    assert replayed == [d for batch in made[:cut] for d in batch]
    after: list[list[Decision]] = [feed(restarted, item) for item in inputs[cut:]]

    assert after == made[cut:]
    assert restarted.snapshot() == uninterrupted.snapshot()


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s.label)
def test_restarts_during_a_synthetic_search_change_no_decision(scenario: Scenario) -> None:
    inputs, made = drive(scenario.searcher(), scenario)
    for cut in range(0, len(inputs), max(1, len(inputs) // 7)):
        restarted = scenario.searcher()
        replay(restarted, inputs[:cut])
        assert [feed(restarted, item) for item in inputs[cut:]] == made[cut:]


def test_the_same_inputs_twice_make_equal_state() -> None:
    scenario = scenarios()[0]
    inputs, _ = drive(scenario.searcher(), scenario)
    first, second = scenario.searcher(), scenario.searcher()
    replay(first, inputs)
    replay(second, inputs)
    assert first.snapshot() == second.snapshot()
