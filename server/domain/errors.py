"""Why the domain refused a command, in words the API can hand to a person.

Each error names the thing a caller must change: the state a run is in, the
attempt that is current, or every manifest field that is wrong, so that the
API layer can map them straight onto gRPC status codes without rewording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DomainError(Exception):
    """A command the domain refuses; nothing was decided."""


class UnknownEventType(DomainError):
    """The log holds a payload type this code does not know (a newer writer?)."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class IllegalTransition(DomainError):
    """The action is not allowed in the state the aggregate is in (FAILED_PRECONDITION)."""

    def __init__(self, entity_id: str, state: str, action: str, kind: str = "run") -> None:
        super().__init__(f"{kind} {entity_id} is {state}; cannot {action}")
        self.entity_id = entity_id
        self.state = state
        self.action = action
        self.kind = kind

    @property
    def run_id(self) -> str:
        return self.entity_id


class StaleAttempt(DomainError):
    """A report names an attempt other than the current one: a late word from a lost agent."""

    def __init__(self, run_id: str, current: int, got: int) -> None:
        when = "no longer" if got < current else "not"
        super().__init__(f"attempt {got} of run {run_id} is {when} current (current: {current})")
        self.run_id = run_id
        self.current = current
        self.got = got


@dataclass(frozen=True)
class FieldError:
    """One bad manifest field: `field` is a dotted path such as "hyperparameters.lr.min"."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ManifestError(DomainError):
    """Every bad field of a manifest at once, so a user fixes them in one go (INVALID_ARGUMENT)."""

    #: Errors spelled out in the message; a manifest with thousands of bad values names the first ones.
    SHOWN = 50

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        message = "; ".join(str(e) for e in self.errors[: self.SHOWN])
        if len(self.errors) > self.SHOWN:
            message += f"; and {len(self.errors) - self.SHOWN} more errors"
        super().__init__(message)

    @property
    def fields(self) -> list[str]:
        return [e.field for e in self.errors]
