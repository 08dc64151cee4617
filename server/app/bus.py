"""The message bus: runs a command's handler in a unit of work, then the effects of what it committed.

Post-commit effects (waking the scheduler, sending a cancel to the agent that
holds a run) are looked up by the type of each committed event
(`runyard.server.app.effects`), so no adapter calls them by hand and an event
with no effect (a log line, a metric point) simply wakes nothing. Effects run
even when the handler raised after some of its commits: what was stored counts.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from google.protobuf.message import Message

from runyard.server.app import aggregates
from runyard.server.app.aggregates import Kind
from runyard.server.app.handlers import Handler
from runyard.server.app.handlers import handlers as default_handlers
from runyard.server.app.unit_of_work import A, Committed, UnitOfWork
from runyard.server.store import EventLog

log = structlog.get_logger(__name__)

#: What one committed event sets off; may return an awaitable (run on the event loop).
Effect = Callable[[Committed], Awaitable[None] | None]
Effects = Mapping[type[Message], Sequence[Effect]]


class MessageBus:
    """The write side of one replica: every command goes through `handle` (or `execute` off the loop)."""

    def __init__(
        self,
        store: EventLog,
        handlers: Mapping[type, Handler] | None = None,
        effects: Effects | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.store = store
        self._handlers = default_handlers() if handlers is None else dict(handlers)
        self._effects: Effects = effects or {}
        self._loop = loop

    def add_effects(self, effects: Effects) -> None:
        """Register what follows a commit of each event type (the composition root does, once it has the parts)."""
        merged = {t: list(v) for t, v in self._effects.items()}
        for event_type, more in effects.items():
            merged.setdefault(event_type, []).extend(more)
        self._effects = merged

    async def handle(self, command: Any) -> Any:
        """Run the command's handler off the event loop, then await its effects; returns the handler's result.

        A caller that goes away (a canceled RPC) does not stop either: what was committed has its effects.
        """
        return await asyncio.shield(self._handle(command))

    async def _handle(self, command: Any) -> Any:
        committed: list[Committed] = []
        try:
            return await asyncio.to_thread(self._run, command, committed)
        finally:
            await self.dispatch(committed)

    def execute(self, command: Any) -> Any:
        """Run the command in this (worker) thread; its effects go to the event loop without being waited for."""
        committed: list[Committed] = []
        try:
            return self._run(command, committed)
        finally:
            if committed:
                self._dispatch_later(committed)

    def load(self, kind: Kind[A], ident: str) -> A:
        """An aggregate as its stream leaves it (NotFound when it has no events): a blocking read."""
        return aggregates.load(UnitOfWork(self.store), kind, ident)

    async def dispatch(self, committed: Sequence[Committed]) -> None:
        """Run every effect registered for each committed event's type, in commit order."""
        for event in committed:
            for effect in self._effects.get(type(event.event), ()):
                try:
                    done = effect(event)
                    if inspect.isawaitable(done):
                        await done
                except Exception:
                    log.exception("post-commit effect failed", event=type(event.event).__name__, stream=event.stream)

    def _run(self, command: Any, committed: list[Committed]) -> Any:
        handler = self._handlers.get(type(command))
        if handler is None:
            raise TypeError(f"no handler for {type(command).__name__}")
        uow = UnitOfWork(self.store)
        try:
            return handler(command, uow)
        finally:
            committed.extend(uow.committed)

    def _dispatch_later(self, committed: list[Committed]) -> None:
        if not any(type(c.event) in self._effects for c in committed):
            return
        loop = self._loop
        if loop is None:
            asyncio.run(self.dispatch(committed))
            return
        if loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.dispatch(committed), loop)
        except RuntimeError:  # the loop is going away: so is the replica
            log.debug("effects dropped at shutdown", events=len(committed))
