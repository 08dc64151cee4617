"""Every event type is either read by a read model or deliberately not.

The projection runner fetches and decodes only the types its read models
declare (`Projector.reads`). A new event type that a projector handles but
does not declare would be silently skipped, so each type must be placed here.
"""

from __future__ import annotations

from runyard.server.domain.events import EVENT_TYPES
from runyard.server.projections.read_models import ReadModelProjector
from runyard.server.projections.registry import all_projectors

#: Types no read model needs: log lines (served from the log by run), storage grants (from the account stream)
#: and search decisions (the driver's and
#: WatchExperiment's, read from the log).
NOT_PROJECTED = {
    "runyard.v1.RunLogged",
    "runyard.v1.RunPromoted",
    "runyard.v1.ExperimentBestFound",
    "runyard.v1.AccountStorageSet",  # grants are read from the account stream (submit check, admin lists)
}


def test_each_event_type_is_read_by_a_read_model_or_listed_as_not_projected() -> None:
    reads = ReadModelProjector(all_projectors()).reads
    assert set(EVENT_TYPES) - reads == NOT_PROJECTED
    assert reads <= set(EVENT_TYPES), "a read model declares a type the log cannot hold"
