"""Every read model the runner keeps up to date, in the order they are applied."""

from __future__ import annotations

from runyard.server.projections.read_models import Projector, RunsProjector


def all_projectors() -> list[Projector]:
    return [RunsProjector()]
