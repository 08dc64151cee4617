"""List pages that fit a default gRPC client.

A default client refuses answers over 4 MiB. Page sizes count items, and an
item may be large (an experiment carries its manifest, up to 512 KiB), so a
page is also cut by bytes: it ends before the item that would take it past
`MAX_PAGE_BYTES`, and its next_page_token continues from there. A page holds
at least one item, so paging always moves on.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from runyard.v1 import resources_pb2

#: Room left under 4 MiB for the rest of the answer and gRPC's framing.
MAX_PAGE_BYTES = 3 * 1024 * 1024


def fitting(items: Sequence[Message], budget: int = MAX_PAGE_BYTES) -> int:
    """How many of the leading items fit in `budget` bytes (at least one, when there is one)."""
    used = 0
    for i, item in enumerate(items):
        # A repeated message field costs its bytes plus a tag and a length prefix (at most 6 bytes here).
        used += item.ByteSize() + 6
        if used > budget and i > 0:
            return i
    return len(items)


def trim_runs(experiment: resources_pb2.Experiment, budget: int = MAX_PAGE_BYTES) -> resources_pb2.Experiment:
    """An experiment answered with its runs keeps as many as fit the budget (in run order).

    `run_count` still says how many there are; ListRuns pages through all of them.
    """
    if experiment.ByteSize() <= budget:
        return experiment
    runs = list(experiment.runs)
    del experiment.runs[:]
    keep = fitting(runs, max(budget - experiment.ByteSize(), 0))
    experiment.runs.extend(runs[:keep])
    return experiment
