"""Every read model the runner keeps up to date, in the order they are applied."""

from __future__ import annotations

from runyard.server.projections.accounts import AccountsProjector
from runyard.server.projections.read_models import Projector, RunsProjector
from runyard.server.projections.usage import UsageProjector


def all_projectors() -> list[Projector]:
    return [RunsProjector(), UsageProjector(), AccountsProjector()]
