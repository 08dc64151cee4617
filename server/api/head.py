"""Wakes watch streams when the log grows.

The store calls back from its own threads after each commit (and, on
PostgreSQL, on NOTIFY from other replicas); watchers are asyncio tasks. This
bridges the two without a thread per watcher. Watchers always re-read from
their own position, so a lost wake-up costs at most the poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib


class LogHead:
    def __init__(self, loop: asyncio.AbstractEventLoop, position: int = 0) -> None:
        self._loop = loop
        self._position = position
        self._changed = asyncio.Event()

    @property
    def position(self) -> int:
        return self._position

    def notify_threadsafe(self, position: int) -> None:
        """Store callback; safe from any thread."""
        self._loop.call_soon_threadsafe(self._advance, position)

    def _advance(self, position: int) -> None:
        if position > self._position:
            self._position = position
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Return once the head is past `position`, or after `timeout` seconds."""
        if self._position > position:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
