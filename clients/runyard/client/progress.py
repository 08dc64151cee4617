"""Progress bars for long transfers, drawn on stderr so stdout stays clean for `-o json`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Below this a transfer is over before a bar would say anything useful (unless on a terminal).
BAR_THRESHOLD_BYTES = 4 * 1024 * 1024


def wants_bar(console: Console, total_bytes: int) -> bool:
    return console.is_terminal or total_bytes > BAR_THRESHOLD_BYTES


@contextmanager
def transfer_bar(console: Console, description: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """Yield a callback taking bytes moved since its last call; a no-op when no bar is wanted."""
    if not wants_bar(console, total_bytes):
        yield lambda n: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total_bytes)
        yield lambda n: bar.advance(task, n)
