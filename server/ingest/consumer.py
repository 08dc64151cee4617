"""Appends what agents report to the log, exactly once.

Reports arrive on a JetStream work-queue stream shared by every replica, each
taken by one of them. A report is acked only after its events are stored; a
crash before the ack redelivers it, and the report's event id turns the second
append into a no-op. Reports of one agent come in order on one subject; a
replica stores a fetched batch run by run, each run's reports in order and
different runs' side by side (their streams are independent), so one slow
append does not hold up every other run. Each report is parsed once, when it
is taken; storing it is the application's (`ApplyAgentReport(s)` through the
bus, which also wakes the scheduler when what was stored frees or asks for
GPUs). Fetching does not wait for a batch
to be stored: each report joins its run's queue at once, and the run's
worker takes it in turn, so a run's RunCompleted is stored right after its
predecessors, not after every report of the batch before it.

Order across replicas. Two replicas fetching from the one consumer at once
would interleave one run's reports (RunStarted stored by one before the other
stored RunStaging), so only the scheduler's leader ingests (`active`); a
replica that stops leading finishes the batch in hand. A transition that still
arrives before its predecessor (after a failover, the dead leader's unacked
batch is redelivered only when its ack wait ends) is put back with a delay
instead of being dropped, until the predecessor is stored or
`EARLY_REPORT_RETRIES` deliveries have passed.

Only agents may report: each report must carry the header
``Authorization: Bearer <secret>`` of a valid ROLE_AGENT key bound to the
report's agent id, arrive on that agent's subject, register no other agent,
and (logs, metrics) name no other run in its body than the report's run (see
`runyard.server.ingest.agent_auth`). Anything else is acked (never
redelivered) and logged, and stores nothing.

A forged or buggy agent may send any bytes. A report whose ids are not
storable (NUL, a lone surrogate, longer than the read models' 64 characters)
is refused the same way, and so is one the log refuses to store
(UnstorableText, or a database DataError): redelivering it could never
succeed, and it must hold nothing up. The text of a run's end (failure
message, cancel reason, results URI) and of a registration is made storable
(`runyard.storable`); log lines and metric points are stored as sent, and the
read models make their text storable when they project them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import DataError

from runyard import bus
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport, ApplyAgentReports
from runyard.server.app.errors import NotFound
from runyard.server.app.reports import REPORTED_EVENTS
from runyard.server.credentials import Credentials
from runyard.server.domain.errors import DomainError, IllegalTransition
from runyard.server.domain.run_states import is_ahead
from runyard.server.ingest.agent_auth import AgentAuth
from runyard.storable import is_storable, make_storable
from runyard.v1 import agent_pb2

log = structlog.get_logger(__name__)

# Deliveries of a transition that came before its predecessor, about a second apart after the first few.
EARLY_REPORT_RETRIES = 60
# Runs whose reports are stored at once (each run's in order). Appends take the log's write lock
# one at a time, and a thread that holds it waits for the GIL like the rest: with 8 at once each
# report took ~11 ms to store (bench/overhead.py, 8 GPU slots), with 4 ~7 ms, with 2 ~6 ms.
PARALLEL_RUNS = 4
# Reports asked for in one fetch, and the most taken and not yet acked: the fetching waits for room.
FETCH_BATCH = 256
# A run's reports waiting in its queue are stored together, up to this many in one transaction.
RUN_BATCH = 32
MAX_IN_HAND = 2048
# Seconds one fetch waits for reports; its pull request lives that long in the NATS server.
FETCH_WAIT_S = 1.0


class Ingest:
    def __init__(self, bus: MessageBus, js: Any, credentials: Credentials) -> None:
        self._bus = bus
        self._js = js
        self._auth = AgentAuth(credentials)
        self.handled = 0
        self.refused = 0
        # Whether this replica ingests now (set by the composition root: the scheduler's leader does).
        self.active: Callable[[], bool] = lambda: True

    async def run(self, stop: asyncio.Event) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig

        sub = await self._js.pull_subscribe(
            "runyard.reports.*",
            durable=bus.INGEST_DURABLE,
            stream=bus.REPORTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000, ack_wait=30),
        )
        self._queues: dict[str, list[Taken]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._gate = asyncio.Semaphore(PARALLEL_RUNS)
        self._in_hand = 0
        self._room = asyncio.Event()
        self._last_fetch = -1.0
        try:
            while not stop.is_set():
                if not self.active():
                    await self._give_back(sub)
                    await asyncio.sleep(0.1)
                    continue
                room = MAX_IN_HAND - self._in_hand
                if room <= 0:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 1.0)
                    continue
                try:
                    self._last_fetch = asyncio.get_running_loop().time()
                    msgs = await sub.fetch(batch=min(FETCH_BATCH, room), timeout=FETCH_WAIT_S)
                except (NatsTimeout, TimeoutError):  # nats-py raises either when nothing came
                    continue
                except Exception:
                    if stop.is_set():
                        return
                    log.exception("fetching reports failed")
                    await asyncio.sleep(0.5)
                    continue
                self._take(msgs)
        finally:
            # Every report taken is acked or nak'ed before this returns.
            if self._workers:
                await asyncio.gather(*self._workers, return_exceptions=True)
            await self._give_back(sub)

    async def _give_back(self, sub: Any) -> None:
        """Nak, for redelivery at once, the reports a fetch's pull request delivered after the fetch returned.

        The request lives on in the NATS server until it expires (FETCH_WAIT_S); what it delivers
        then waits in the subscription, unacked. A replica that stops ingesting (shut down, or no
        longer the leader) would leave those reports to come back only when their ack wait (30 s)
        ends, after the next ingest stored the same runs' later reports: a watcher that saw the
        run end would miss the lines in between. Reaches into nats-py's pull subscription for its
        queue: nats-py has no public call that takes queued messages without a new pull request,
        and a new request would open the same window again.
        """
        inner: Any = getattr(sub, "_sub", None)
        queue = getattr(inner, "_pending_queue", None)
        if queue is None or self._last_fetch < 0:
            return
        from nats.js.client import JetStreamContext

        loop = asyncio.get_running_loop()
        until = self._last_fetch + FETCH_WAIT_S + 0.25
        while True:
            while not queue.empty():
                msg = queue.get_nowait()
                with contextlib.suppress(Exception):  # nats-py counts queued bytes against its slow-consumer limit
                    inner._pending_size -= len(msg.data)
                if JetStreamContext.is_status_msg(msg):  # the request's own end (404/408): nothing to give back
                    continue
                with contextlib.suppress(Exception):
                    await msg.nak()
            if loop.time() >= until:
                return
            await asyncio.sleep(0.05)

    def _take(self, msgs: list[Any]) -> None:
        """Parse each report (once) and queue it behind those of its run (or agent); a worker per run stores them."""
        for msg in msgs:
            taken = Taken(msg, _parse(msg))
            key = _order_key(taken.report)
            self._in_hand += 1
            queue = self._queues.get(key)
            if queue is not None:  # that run's worker takes it in turn
                queue.append(taken)
                continue
            self._queues[key] = [taken]
            worker = asyncio.create_task(self._work_through(key), name="ingest-run")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _work_through(self, key: str) -> None:
        """Store one run's reports in arrival order until its queue is empty (at most PARALLEL_RUNS at once)."""
        queue = self._queues[key]
        try:
            while queue:
                # The gate is taken per turn, not per queue: a run printing without pause keeps its queue
                # full, and held for the whole queue it would make a quiet run's line wait for seconds.
                async with self._gate:
                    taken = queue[:RUN_BATCH]
                    del queue[:RUN_BATCH]
                    try:
                        await self._handle_many(taken)
                    except Exception:
                        log.exception("handling reports failed; they will be redelivered", subject=taken[0].msg.subject)
                        for one in taken:
                            with contextlib.suppress(Exception):
                                await one.msg.nak(delay=1.0)
                    finally:
                        self._in_hand -= len(taken)
                        self._room.set()
        finally:
            # No await between the last look at the queue and this: a report taken later starts a new worker.
            del self._queues[key]
            self._in_hand -= len(queue)

    async def _handle_many(self, taken: list[Taken]) -> None:
        """One run's reports in order: stored in one transaction when it takes them all, else one by one."""
        if len(taken) > 1 and (reports := await self._admissible(taken)) is not None:
            try:
                await self._bus.handle(ApplyAgentReports(reports))
            except Exception as exc:  # one of them is refused or raced: each on its own says which
                log.debug("reports taken one by one", run_id=reports[0].run_id, reason=str(exc))
            else:
                for one in taken:
                    await one.msg.ack()
                self.handled += len(taken)
                return
        for one in taken:
            await self._handle(one.msg, one.report)

    async def _admissible(self, taken: list[Taken]) -> list[agent_pb2.AgentReport] | None:
        """The reports, when all are readable, authorized and about one run; None otherwise."""
        batch = []
        for one in taken:
            msg, report = one.msg, one.report
            if report is None:
                return None
            if (
                not report.run_id
                or report.WhichOneof("body") == "registered"
                or _unstorable(report)
                or await self._refusal(msg, report)
            ):
                return None
            _storable_body(report)
            batch.append(report)
        return batch if len({r.run_id for r in batch}) == 1 else None

    async def _handle(self, msg: Any, report: agent_pb2.AgentReport | None) -> None:
        if report is None:
            log.warning("dropping an unreadable report", subject=msg.subject)
            await msg.ack()
            return
        unstorable = _unstorable(report)
        if unstorable:
            self.refused += 1
            log.warning("report refused: unstorable", subject=msg.subject, reason=unstorable)
            await msg.ack()
            return
        _storable_body(report)
        refusal = await self._refusal(msg, report)
        if refusal:
            self.refused += 1
            log.warning(
                "report refused: not from an authorized agent",
                agent_id=report.agent_id,
                subject=msg.subject,
                body=report.WhichOneof("body"),
                reason=refusal,
            )
            await msg.ack()
            return
        try:
            await self._bus.handle(ApplyAgentReport(report))
        except IllegalTransition as exc:
            delivered = _deliveries(msg)
            if _ahead(exc, report) and delivered < EARLY_REPORT_RETRIES:
                # Most likely ahead of its predecessor: try again once that may be stored.
                log.info("report out of order; retrying", run_id=report.run_id, reason=str(exc), delivered=delivered)
                await msg.nak(delay=min(0.05 * 2**delivered, 1.0))
                return
            log.warning("report refused", run_id=report.run_id, body=report.WhichOneof("body"), reason=str(exc))
            await msg.ack()
            return
        except (DomainError, NotFound) as exc:
            # A late report of a superseded attempt, or of a run that ended: refused.
            log.info(
                "report refused",
                agent_id=report.agent_id,
                run_id=report.run_id,
                body=report.WhichOneof("body"),
                reason=str(exc),
            )
            await msg.ack()
            return
        except (ValueError, DataError) as exc:
            # The log or the database refuses what the report holds: a redelivery would be refused again.
            self.refused += 1
            log.warning("report refused: the log cannot store it", run_id=report.run_id, reason=str(exc)[:500])
            await msg.ack()
            return
        except Exception:
            log.exception("storing a report failed; it will be redelivered", run_id=report.run_id)
            await msg.nak(delay=1.0)
            return
        await msg.ack()
        self.handled += 1

    async def _refusal(self, msg: Any, report: agent_pb2.AgentReport) -> str:
        """Why the report may not be stored ("" when it may)."""
        refusal = await self._auth.refusal(
            getattr(msg, "headers", None), report.agent_id, msg.subject, bus.reports_subject(report.agent_id)
        )
        if refusal:
            return refusal
        body = report.WhichOneof("body")
        if body == "registered" and report.registered.agent_id != report.agent_id:
            return f"agent {report.agent_id!r} may not register agent {report.registered.agent_id!r}"
        # A run's output is filed under the report's run: a body naming another run would add to that run.
        named = report.logged.run_id if body == "logged" else report.metrics.run_id if body == "metrics" else ""
        if named and named != report.run_id:
            return f"a {body} report of run {report.run_id!r} names run {named!r} in its body"
        return ""


@dataclass(frozen=True)
class Taken:
    """A report as fetched and as parsed (None: unreadable), kept together until it is acked."""

    msg: Any
    report: agent_pb2.AgentReport | None


#: Longest id a report may name: the read models' id columns (read_models.ID_WIDTH).
MAX_REPORT_ID = 64
#: Bodies whose text is made storable here (rare ones: a run's end, a registration); see the module docstring.
_STORABLE_BODIES = ("failed", "canceled", "completed", "registered", "checkpointed")


def _unstorable(report: agent_pb2.AgentReport) -> str:
    """Why the report's ids cannot be stored ("" when they can)."""
    body = report.WhichOneof("body")
    ids = [("agent_id", report.agent_id), ("run_id", report.run_id)]
    if body in ("metrics", "logged"):
        ids.append((f"{body}.run_id", getattr(report, body).run_id))
    elif body == "registered":
        ids.append(("registered.agent_id", report.registered.agent_id))
    for name, value in ids:
        if len(value) > MAX_REPORT_ID or not is_storable(value):
            return f"{name} {value[:80]!r} is longer than {MAX_REPORT_ID} characters or holds NUL or a lone surrogate"
    return ""


def _storable_body(report: agent_pb2.AgentReport) -> None:
    body = report.WhichOneof("body")
    if body in _STORABLE_BODIES:
        make_storable(getattr(report, body))


def _ahead(exc: IllegalTransition, report: agent_pb2.AgentReport) -> bool:
    """Is the report ahead of the run (its predecessor not stored yet), rather than behind it (late)?"""
    event = REPORTED_EVENTS.get(report.WhichOneof("body") or "")
    return event is not None and is_ahead(exc.state, event)


def _parse(msg: Any) -> agent_pb2.AgentReport | None:
    report = agent_pb2.AgentReport()
    try:
        report.ParseFromString(msg.data)
    except Exception:
        return None
    return report


def _order_key(report: agent_pb2.AgentReport | None) -> str:
    """Reports with the same key are stored in arrival order: a run's, or an agent's own."""
    if report is None:
        return ""
    return f"run:{report.run_id}" if report.run_id else f"agent:{report.agent_id}"


def _deliveries(msg: Any) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return EARLY_REPORT_RETRIES
