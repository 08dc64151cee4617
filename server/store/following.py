"""Following the log: the one loop behind every backend's `subscribe`.

A subscriber re-reads from its own position after each wake-up, so a late,
doubled or lost wake-up costs latency, never an event (see notify.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

from .model import RecordedEvent
from .notify import HeadTracker

ReadAll = Callable[..., list[RecordedEvent]]


def follow(
    read_all: ReadAll,
    head_position: Callable[[], int],
    tracker: HeadTracker,
    is_closed: Callable[[], bool],
    after_position: int,
    *,
    stop: threading.Event,
    stream_ids: Sequence[str] | None,
    correlation_id: str | None,
    batch_size: int,
    poll_interval: float,
) -> Iterator[RecordedEvent]:
    """Every (matching) event after `after_position`, stored then live, each once, in position order."""
    filtered = stream_ids is not None or correlation_id is not None
    scanned = after_position  # every event up to here has been read (matching or not)
    while not stop.is_set() and not is_closed():
        # With filters, the head read *before* the batch tells how far an
        # incomplete batch has scanned, so that we wait beyond it.
        head = head_position() if filtered else 0
        batch = read_all(scanned, batch_size, stream_ids=stream_ids, correlation_id=correlation_id)
        for recorded in batch:
            if stop.is_set():
                return
            scanned = recorded.position
            yield recorded
        if len(batch) == batch_size:
            continue
        scanned = max(scanned, head)
        tracker.wait_beyond(scanned, poll_interval, stop)
