"""The write side's handlers on a real event log: retry on conflict, idempotent submit, one manifest parse."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf.message import Message

from runyard.server.app import experiments
from runyard.server.app.aggregates import ACCOUNT, EXPERIMENT, RUN, change
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import CancelExperiment, SetQuota, SubmitExperiment
from runyard.server.app.errors import LimitExceeded, NotFound, PermissionDenied
from runyard.server.app.experiments import SubmitChecks
from runyard.server.app.handlers import handlers
from runyard.server.app.storage_access import SubmitStorageCheck
from runyard.server.app.unit_of_work import MAX_RETRIES, UnitOfWork
from runyard.server.domain.account import Account
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.manifest import parse_manifest
from runyard.server.store import ConcurrencyError, EventStore
from tests.unit.server.app.helpers import account, manifest, submitted_runs


def test_a_decision_made_on_a_stale_version_is_made_again_on_the_new_state(event_store: EventStore) -> None:
    bus = MessageBus(event_store)
    account(bus)
    seen: list[int] = []

    def decide(a: Account) -> list[Message]:
        seen.append(a.gpu_quota)
        if len(seen) == 1:  # another writer gets there between our read and our append
            bus.execute(SetQuota("acct", 8))
        return a.set_quota(a.gpu_quota + 1, 0, 0)

    outcome = change(UnitOfWork(event_store), ACCOUNT, "acct", decide)

    assert seen == [4, 8], "decided again on the state the other writer left"
    assert outcome.position == event_store.head_position()
    assert bus.load(ACCOUNT, "acct").gpu_quota == 9


def test_a_stream_that_never_stops_changing_gives_up_with_a_conflict(event_store: EventStore) -> None:
    bus = MessageBus(event_store)
    account(bus)
    calls = 0

    def decide(a: Account) -> list[Message]:
        nonlocal calls
        calls += 1
        bus.execute(SetQuota("acct", a.gpu_quota + 1))
        return a.set_quota(100, 0, 0)

    with pytest.raises(ConcurrencyError):
        change(UnitOfWork(event_store), ACCOUNT, "acct", decide)
    assert calls == MAX_RETRIES


def test_a_decision_that_records_nothing_appends_nothing(event_store: EventStore) -> None:
    bus = MessageBus(event_store)
    account(bus)
    head = event_store.head_position()
    assert bus.execute(SetQuota("acct", 4)) == 0, "the plan was already that"
    assert event_store.head_position() == head
    with pytest.raises(NotFound, match="account nobody not found"):
        bus.execute(SetQuota("nobody", 4))


def test_a_repeated_request_id_gets_the_first_experiment_and_stores_nothing_more(event_store: EventStore) -> None:
    bus = MessageBus(event_store)
    first = bus.execute(SubmitExperiment("acct", manifest(runs=3), "", "req-1"))
    head = event_store.head_position()

    again = bus.execute(SubmitExperiment("acct", manifest(runs=3), "", "req-1"))

    assert again.experiment_id == first.experiment_id
    assert 0 < again.position <= first.position, "a position the read models reach by the first's end"
    assert event_store.head_position() == head
    other = bus.execute(SubmitExperiment("other-acct", manifest(runs=3), "", "req-1"))
    assert other.experiment_id != first.experiment_id, "a request id is the account's own"
    assert len(bus.load(EXPERIMENT, first.experiment_id).run_ids) == 3


def test_cancel_ends_queued_runs_and_a_second_cancel_changes_nothing(event_store: EventStore) -> None:
    bus = MessageBus(event_store)
    experiment_id, run_ids = submitted_runs(bus, runs=2)
    assert bus.execute(CancelExperiment(experiment_id, "canceled by user")) > 0
    head = event_store.head_position()
    assert bus.execute(CancelExperiment(experiment_id, "canceled by user")) == 0
    assert event_store.head_position() == head
    assert bus.load(EXPERIMENT, experiment_id).cancel_requested
    assert [bus.load(RUN, r).state_name for r in run_ids] == ["CANCELED", "CANCELED"]


class Objects:
    def exists(self, uri: str) -> bool:
        return True


def checked_bus(event_store: EventStore, tmp_path: Path, queued: int = 0, cap: int = 0) -> MessageBus:
    config: Any = SimpleNamespace(code_uri_prefix=f"file://{tmp_path}/code/", storage_root=str(tmp_path))
    objects: Any = Objects()
    checks = SubmitChecks(SubmitStorageCheck(config, objects), None, lambda account_id: (cap, queued))
    return MessageBus(event_store, handlers(checks))


def test_submit_parses_the_manifest_once_for_every_check_and_the_create(
    event_store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = checked_bus(event_store, tmp_path, queued=1, cap=10)
    account(bus)
    parses = 0
    parse = parse_manifest

    def counting(text: str) -> Any:
        nonlocal parses
        parses += 1
        return parse(text)

    monkeypatch.setattr(experiments, "parse_manifest", counting)
    bus.execute(SubmitExperiment("acct", manifest(runs=3)))
    assert parses == 1


def test_submit_refusals_come_in_order_and_name_what_refuses(event_store: EventStore, tmp_path: Path) -> None:
    bus = checked_bus(event_store, tmp_path, queued=8, cap=10)
    # Storage first: an account that does not exist has no storage to check, whatever the manifest says.
    with pytest.raises(PermissionDenied, match="account nobody not found: its storage cannot be checked"):
        bus.execute(SubmitExperiment("nobody", "not: [a manifest"))
    account(bus)
    with pytest.raises(LimitExceeded, match="max_queued_runs: account acct may have 10 runs queued; 8 are queued"):
        bus.execute(SubmitExperiment("acct", manifest(runs=3)))
    # A manifest that does not parse skips the checks that need it and is refused by the create.
    with pytest.raises(ManifestError):
        bus.execute(SubmitExperiment("acct", "name: x\n"))
    assert event_store.head_position() == 1, "nothing but the account was stored"
