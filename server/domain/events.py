"""The log's vocabulary: event payload types and how they become bytes.

Domain events are the generated `runyard.v1.events_pb2` messages themselves.
The type stored beside each event is the message's full protobuf name, so any
client with the protos (not only this Python code) can read the log, and the
bytes are serialized deterministically so that the same event always hashes
and compares the same.

Stream and id helpers live in `ids` and are re-exported here, so callers need
one import for everything they write to the log.

Events keep their meaning as the schema grows: `decode` hands every reader an
old event in the current shape (`upcasting`), so no reader branches on age.
"""

from __future__ import annotations

from typing import cast

from google.protobuf.message import Message

from runyard.server.domain.errors import UnknownEventType
from runyard.server.domain.ids import (
    agent_stream,
    event_id_for,
    experiment_id_for_request,
    experiment_stream,
    new_experiment_id,
    run_id_for,
    run_logs_stream,
    run_metrics_stream,
    run_stream,
)
from runyard.server.domain.upcasting import upcast_experiment_created
from runyard.v1 import events_pb2

__all__ = [
    "EVENT_TYPES",
    "UnknownEventType",
    "agent_stream",
    "decode",
    "encode",
    "event_id_for",
    "event_type",
    "experiment_id_for_request",
    "experiment_stream",
    "new_experiment_id",
    "run_id_for",
    "run_logs_stream",
    "run_metrics_stream",
    "run_stream",
]


def _registry() -> dict[str, type[Message]]:
    types: dict[str, type[Message]] = {}
    for name in events_pb2.DESCRIPTOR.message_types_by_name:
        cls = getattr(events_pb2, name)
        types[cls.DESCRIPTOR.full_name] = cls
    return types


#: Every payload type the log may hold, by stored type name ("runyard.v1.RunAssigned").
EVENT_TYPES: dict[str, type[Message]] = _registry()


def event_type(msg: Message) -> str:
    """The stored type name of a payload; refuses messages that are not event payloads."""
    name = msg.DESCRIPTOR.full_name
    if EVENT_TYPES.get(name) is not type(msg):
        raise UnknownEventType(name)
    return name


def encode(msg: Message) -> tuple[str, bytes]:
    return event_type(msg), msg.SerializeToString(deterministic=True)


_EXPERIMENT_CREATED = events_pb2.ExperimentCreated.DESCRIPTOR.full_name


def decode(type_: str, data: bytes) -> Message:
    """The payload in today's shape: an event logged in an older shape is upcast here, the one place on read."""
    cls = EVENT_TYPES.get(type_)
    if cls is None:
        raise UnknownEventType(type_)
    msg = cls.FromString(data)
    if type_ == _EXPERIMENT_CREATED:
        return upcast_experiment_created(cast(events_pb2.ExperimentCreated, msg))
    return msg
