"""Where a run's checkpoints live in object storage: one rule for the agent that writes them and the Run
that records them.

A checkpoint `<attempt>-<seq>` of a run is stored under
`<results_uri>/checkpoints/<attempt>-<seq>/` with its manifest at
`<results_uri>/checkpoints/<attempt>-<seq>.json`. The control plane records a
reported checkpoint only when its manifest URI is exactly that: an agent may
not point a run's next attempt (which another agent stages) at objects outside
the run's own results, such as another account's storage.
"""

from __future__ import annotations

import re

_ID = re.compile(r"^([1-9][0-9]{0,9})-([1-9][0-9]{0,9})$")


def checkpoint_prefix(results_uri: str, checkpoint_id: str) -> str:
    """The folder a checkpoint's files are stored under."""
    return f"{results_uri.rstrip('/')}/checkpoints/{checkpoint_id}"


def manifest_uri(results_uri: str, checkpoint_id: str) -> str:
    """The checkpoint's manifest object, written after its files."""
    return f"{checkpoint_prefix(results_uri, checkpoint_id)}.json"


def layout_error(results_uri: str, attempt: int, checkpoint_id: str, reported_uri: str) -> str | None:
    """Why a reported checkpoint of `attempt` is not where the run's checkpoints live; None when it is."""
    match = _ID.match(checkpoint_id)
    if match is None or int(match.group(1)) != attempt:
        return f"checkpoint id {checkpoint_id!r} is not <attempt>-<seq> of attempt {attempt}"
    if not results_uri:
        return "the run has no results location to keep checkpoints in"
    expected = manifest_uri(results_uri, checkpoint_id)
    if reported_uri != expected:
        return f"checkpoint {checkpoint_id} names manifest {reported_uri!r}, not {expected!r}"
    return None
