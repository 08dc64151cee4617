"""Commit callbacks tell this process's NOTIFY echoes from other processes' commits (PostgreSQL)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from runyard.server.projections.runner import ProjectionRunner
from runyard.server.store import EventStore, NewEvent
from runyard.server.store.notify import commit_is_echo, commit_is_heard
from runyard.v1 import events_pb2

pytestmark = pytest.mark.integration


def one(stream: str) -> list[NewEvent]:
    """One real event (the read models decode what they project): an unknown agent's AgentLost."""
    lost = events_pb2.AgentLost(message=f"test on {stream}")
    return [NewEvent(lost.DESCRIPTOR.full_name, lost.SerializeToString(), event_id=uuid.uuid4())]


def test_notifies_of_our_own_commits_are_echoes_and_another_process_s_are_not(pg_session_url: str) -> None:
    ours = EventStore.open(pg_session_url)
    theirs = EventStore.open(pg_session_url)  # another replica: its own pool and sessions
    seen: list[tuple[int, bool, str]] = []
    heard: dict[int, bool] = {}
    guard = threading.Condition()

    def callback(position: int) -> None:
        with guard:
            seen.append((position, commit_is_echo(), threading.current_thread().name))
            heard[position] = commit_is_heard()
            guard.notify_all()

    unsubscribe = ours.on_commit(callback)
    try:
        stream = f"agent:sources-{uuid.uuid4().hex}"
        mine = ours.append(stream, one(stream)).last_position
        other = theirs.append(stream, one(stream)).last_position
        deadline = time.monotonic() + 10
        with guard:
            while not any(p == other for p, _, _ in seen) and time.monotonic() < deadline:
                guard.wait(0.1)
        by_position = {p: (echo, thread) for p, echo, thread in seen}
        assert mine in by_position and other in by_position, seen
        # Our commit calls back in the committing thread (or, should its NOTIFY come first, as an echo).
        echo, thread = by_position[mine]
        assert thread == threading.current_thread().name or echo, seen
        # Another process's commit comes only through the listener, and is no echo.
        assert by_position[other] == (False, "runyard-event-log-listener"), seen
        # The scheduler is woken through the log only by what was heard (runyard.server.app.effects does the rest).
        assert heard[other] and heard[mine] == echo, heard
    finally:
        unsubscribe()
        theirs.close()
        ours.close()


def test_reach_brings_the_read_models_to_a_position_and_no_further_work_once_there(pg_session_url: str) -> None:
    store = EventStore.open(pg_session_url)
    try:
        runner = ProjectionRunner(store)
        runner.catch_up()
        stream = f"agent:reach-{uuid.uuid4().hex}"
        head = store.append(stream, one(stream)).last_position
        assert runner.position < head
        runner.reach(head)
        assert runner.position >= head
        runner.reach(head)  # there already: returns without a batch
        assert runner.position >= head
    finally:
        store.close()
