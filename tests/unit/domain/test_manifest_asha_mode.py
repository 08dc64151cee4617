"""`search.asha.mode`: stop-only ASHA stays the default; `pause` needs max_resource; old facts read as stop."""

from __future__ import annotations

import pytest

from runyard.server.domain.errors import ManifestError
from runyard.server.domain.experiment_facts import facts_of, manifest_of
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.searchers import AshaPauseSearcher, AshaSearcher, searcher_for
from tests.unit.domain.test_manifest_schema import schema_errors


def text(asha: str) -> str:
    return (
        "name: e\ncommand: python t.py --lr ${lr}\nresults: s3://results/e\nhyperparameters: {lr: [0.1, 0.01, 0.001]}\n"
        f"search: {{method: grid, max_parallel: 2, metric: acc, goal: maximize, early_stopping: asha{asha}}}\n"
    )


PAUSE = text(", asha: {max_resource: 27, mode: pause}")


def test_mode_pause_is_parsed_and_stop_is_the_default() -> None:
    assert parse_manifest(PAUSE).search.asha.mode == "pause"
    assert parse_manifest(text("")).search.asha.mode == "stop"
    assert parse_manifest(text(", asha: {mode: stop}")).search.asha.mode == "stop"
    assert schema_errors(PAUSE) == []


@pytest.mark.parametrize(
    ("asha", "field"),
    [
        (", asha: {mode: pause}", "search.asha.mode"),
        (", asha: {max_resource: 9, mode: resume}", "search.asha.mode"),
    ],
)
def test_a_bad_mode_is_refused_by_the_validator_and_the_schema(asha: str, field: str) -> None:
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        parse_manifest(text(asha))
    assert schema_errors(text(asha)), "the schema refuses it too"


def test_the_facts_record_the_mode_and_facts_without_one_are_stop_only() -> None:
    paused = parse_manifest(PAUSE)
    facts = facts_of(paused)
    assert facts.plan.search.asha.mode == "pause"
    assert manifest_of("e", facts) == paused
    assert isinstance(searcher_for(manifest_of("e", facts) or paused, "exp"), AshaPauseSearcher)
    stop = facts_of(parse_manifest(text(", asha: {max_resource: 27}")))
    assert stop.plan.search.asha.mode == "", "the default is not written: the same facts as before modes existed"
    old = manifest_of("e", stop)
    assert old is not None and old.search.asha.mode == "stop"
    assert isinstance(searcher_for(old, "exp"), AshaSearcher)
