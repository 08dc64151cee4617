"""Names in the log: stream ids, experiment and run ids, deterministic event ids.

Ids that a retried request must land on again (an experiment created with the
same client request id, the runs it expands into, events derived from an agent
report) are uuid5 hashes of what identifies them, so a retry maps onto the same
stream and the store's optimistic concurrency turns the duplicate into a no-op.

Experiment and run ids carry 10 base32 characters (50 bits): a collision among
a million ids has odds of about 1 in 2,000, and it fails loudly (the stream
already exists) rather than merging two experiments.
"""

from __future__ import annotations

import base64
import secrets
import uuid

#: Namespace of every uuid5 Runyard derives; fixed forever, since ids in old logs depend on it.
NAMESPACE = uuid.UUID("5d0c1f5e-8a57-4f0e-9a53-72756e796172")

_ID_CHARS = 10
_SEPARATOR = "\x1f"  # a character no id or request id contains, so ("a", "bc") != ("ab", "c")


def _short(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").lower()[:_ID_CHARS]


def _derived(*parts: str) -> bytes:
    return uuid.uuid5(NAMESPACE, _SEPARATOR.join(parts)).bytes


def experiment_stream(experiment_id: str) -> str:
    return f"experiment:{experiment_id}"


def run_stream(run_id: str) -> str:
    return f"run:{run_id}"


def run_logs_stream(run_id: str) -> str:
    return f"run-logs:{run_id}"


def run_metrics_stream(run_id: str) -> str:
    return f"run-metrics:{run_id}"


def agent_stream(agent_id: str) -> str:
    return f"agent:{agent_id}"


def new_experiment_id() -> str:
    """A fresh random id, for a create call that gave no client request id."""
    return "exp-" + _short(secrets.token_bytes(8))


def experiment_id_for_request(account_id: str, client_request_id: str) -> str:
    """The id a create call with this request id always gets, so a retry never creates twice."""
    return "exp-" + _short(_derived("experiment", account_id, client_request_id))


def run_id_for(experiment_id: str, index: int) -> str:
    """The id of the run at `index` of an experiment; recreating the experiment recreates the same ids."""
    return "run-" + _short(_derived("run", experiment_id, str(index)))


def event_id_for(*parts: str) -> uuid.UUID:
    """A deterministic event id, so an event derived twice from the same cause is stored once."""
    return uuid.uuid5(NAMESPACE, _SEPARATOR.join(parts))
