"""What wakes the scheduling loop through the log: other processes' commits, not this replica's own.

This replica's own commits wake it through the application's bus, by event type
(tests/unit/server/app/test_bus.py); here only the head moves for them.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from runyard.server.scheduler.scheduler import Scheduler
from runyard.server.store import notify
from runyard.server.store.notify import HeadTracker, commit_is_echo, commit_is_heard


def as_the_listener(callback: Any, position: int, echo: bool = False) -> None:
    """Pass a head on the way the listener thread does: heard from the database (an echo when it is ours)."""

    def listen() -> None:
        notify._this_thread.heard = True
        notify._this_thread.echo = echo
        callback(position)

    thread = threading.Thread(target=listen)
    thread.start()
    thread.join()


def test_a_commit_made_here_is_not_heard_and_one_the_listener_passes_on_is() -> None:
    tracker = HeadTracker()
    seen: list[tuple[int, bool, bool]] = []
    tracker.add_callback(lambda position: seen.append((position, commit_is_heard(), commit_is_echo())))

    tracker.advance(1)
    as_the_listener(tracker.advance, 2)
    other = threading.Thread(target=tracker.advance, args=(3,))
    other.start()
    other.join()
    as_the_listener(tracker.advance, 4, echo=True)

    assert seen == [(1, False, False), (2, True, False), (3, False, False), (4, True, True)]


def scheduler() -> Scheduler:
    ctx: Any = SimpleNamespace(
        config=SimpleNamespace(agent_timeout_s=15.0, attempt_lease_s=60.0), store=SimpleNamespace(engine=None)
    )
    return Scheduler(ctx, None, None, lease=None, bus=None)  # type: ignore[arg-type]


def test_an_own_commit_moves_the_head_the_cycle_waits_for_but_only_another_replicas_wakes_the_loop() -> None:
    async def main() -> None:
        s = scheduler()
        s._loop = asyncio.get_running_loop()

        await asyncio.to_thread(s._on_commit, 7)  # committed here: the bus wakes the loop by event type
        await asyncio.sleep(0)
        assert not s._wake.is_set()
        assert s._head == 7, "the next cycle still brings the read models to this replica's own commit"

        await asyncio.to_thread(as_the_listener, s._on_commit, 8, True)  # the echo of our own commit
        await asyncio.sleep(0)
        assert not s._wake.is_set()
        assert s._head == 8

        await asyncio.to_thread(as_the_listener, s._on_commit, 9)  # another replica's commit
        await asyncio.wait_for(s._wake.wait(), 5.0)
        assert s._head == 9

        await asyncio.to_thread(s._on_commit, 5)  # positions may arrive out of order
        assert s._head == 9

    asyncio.run(main())
