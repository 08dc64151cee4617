"""The values the event log takes and gives back, and the errors it raises.

Kept free of SQLAlchemy so that domain code and tests can build events
without touching a database.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, NamedTuple, TypeAlias


class AnyVersion(enum.Enum):
    """Type of the `ANY` sentinel; an enum so that `is ANY` narrows for type checkers."""

    ANY = "ANY"

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = AnyVersion.ANY
"""expected_version that skips the version check: the append goes after whatever is there."""

NO_STREAM: Final[int] = 0
"""expected_version for "this stream must not exist yet": versions start at 1."""

ExpectedVersion: TypeAlias = int | Literal[AnyVersion.ANY]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append.

    `event_id` is the idempotency key: appending an id that is already stored
    is a no-op, so a caller that lost the answer to an append simply retries it.
    """

    type: str
    data: bytes
    event_id: uuid.UUID
    correlation_id: str | None = None


class RecordedEvent(NamedTuple):
    """An event as stored: `position` orders the whole log, `version` one stream.

    A named tuple, not a dataclass: a rebuild makes tens of thousands a
    second, and a tuple is built four times faster than a frozen dataclass.
    """

    position: int
    stream_id: str
    version: int
    event_id: uuid.UUID
    type: str
    data: bytes
    correlation_id: str | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed; `appended` is False when every event id was already stored."""

    last_position: int
    last_version: int
    appended: bool


class ConcurrencyError(Exception):
    """The stream is not at the version the caller decided on: reload and decide again.

    `actual` is -1 when the database refused the append (a unique constraint)
    and the current version is not known at that point.
    """

    def __init__(self, stream_id: str, expected: ExpectedVersion, actual: int) -> None:
        shown = "no stream" if expected == NO_STREAM else f"version {expected!r}"
        now = "unknown" if actual < 0 else ("absent" if actual == 0 else f"at version {actual}")
        super().__init__(f"stream {stream_id!r} expected at {shown}, but it is {now}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class DuplicateEventError(Exception):
    """Some event ids of a batch are stored already and some are not, or they are stored in
    another stream: the batch is not a retry of an earlier append, so it is refused whole."""

    def __init__(self, stream_id: str, message: str) -> None:
        super().__init__(f"stream {stream_id!r}: {message}")
        self.stream_id = stream_id


class UnstorableText(ValueError):
    """An append whose stream id, type or correlation id holds text a backend cannot store (NUL, a lone surrogate)."""
