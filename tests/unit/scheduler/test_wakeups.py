"""What wakes the scheduling loop: commits that may change a decision, not a run's output."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from runyard.server.scheduler.scheduler import Scheduler
from runyard.server.store.notify import HeadTracker, commit_is_echo, commit_is_quiet, quiet_commits


def test_quiet_commits_mark_only_the_callbacks_of_their_own_thread() -> None:
    tracker = HeadTracker()
    seen: list[tuple[int, bool, bool]] = []
    tracker.add_callback(lambda position: seen.append((position, commit_is_quiet(), commit_is_echo())))

    tracker.advance(1)
    with quiet_commits():
        with quiet_commits():
            tracker.advance(2)
        tracker.advance(3)  # still inside the outer block
        other = threading.Thread(target=tracker.advance, args=(4,))
        other.start()
        other.join()
    tracker.advance(5)

    assert seen == [(1, False, False), (2, True, False), (3, True, False), (4, False, False), (5, False, False)]


def scheduler() -> Scheduler:
    ctx: Any = SimpleNamespace(
        config=SimpleNamespace(agent_timeout_s=15.0, attempt_lease_s=60.0), store=SimpleNamespace(engine=None)
    )
    return Scheduler(ctx, None, None, lease=None)  # type: ignore[arg-type]


def test_a_quiet_commit_moves_the_head_the_cycle_waits_for_but_does_not_wake_the_loop() -> None:
    async def main() -> None:
        s = scheduler()
        s._loop = asyncio.get_running_loop()

        def commit(position: int, quiet: bool) -> None:
            if quiet:
                with quiet_commits():
                    s._on_commit(position)
            else:
                s._on_commit(position)

        await asyncio.to_thread(commit, 7, True)
        await asyncio.sleep(0)
        assert not s._wake.is_set()
        assert s._head == 7, "the next cycle still brings the read models to the quiet commit"

        await asyncio.to_thread(commit, 8, False)
        await asyncio.wait_for(s._wake.wait(), 5.0)
        assert s._head == 8

        await asyncio.to_thread(commit, 5, False)  # positions may arrive out of order
        assert s._head == 8

    asyncio.run(main())
