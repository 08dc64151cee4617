"""The scheduling loop of the leading replica: admit, place, dispatch.

Woken by the log (a run queued or ended), by an agent's first heartbeat, or
by a one-second tick. Each cycle reads the read models after waiting for them
to include everything it appended before, so it never places on stale
capacity; the run stream's expected version makes an assignment by a second
(e.g. deposed) leader fail instead of doubling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog

from runyard import bus
from runyard.server.context import ServerContext
from runyard.server.domain.errors import DomainError
from runyard.server.domain.scheduling import AgentCapacity, QueuedRun, place
from runyard.server.scheduler.heartbeats import Heartbeats
from runyard.server.scheduler.leader import LeaderLease
from runyard.server.store import ConcurrencyError
from runyard.v1 import agent_pb2, common_pb2, events_pb2

log = structlog.get_logger(__name__)
RS = common_pb2.RunState


class Scheduler:
    def __init__(self, ctx: ServerContext, js: Any, nc: Any, lease: LeaderLease) -> None:
        self._ctx = ctx
        self._js = js
        self._nc = nc
        self._lease = lease
        self._heartbeats = Heartbeats(ctx.config.agent_timeout_s)
        self._wake = asyncio.Event()
        self._leading = False
        self.waiting: dict[str, str] = {}
        self.decisions = 0
        self.decision_seconds = 0.0

    def wakeup(self) -> None:
        self._wake.set()

    def wakeup_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self._nc.subscribe(bus.HEARTBEAT_WILDCARD, cb=self._on_heartbeat)
        try:
            while not stop.is_set():
                try:
                    await self._cycle()
                except Exception:
                    log.exception("scheduling cycle failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                self._wake.clear()
        finally:
            await sub.unsubscribe()
            await asyncio.to_thread(self._lease.release)

    async def _on_heartbeat(self, msg: Any) -> None:
        beat = agent_pb2.AgentHeartbeat()
        beat.ParseFromString(msg.data)
        if self._heartbeats.record(beat):
            self._wake.set()

    async def _cycle(self) -> None:
        leading = await asyncio.to_thread(self._lease.try_acquire)
        if not leading:
            self._leading = False
            return
        if not self._leading:
            self._leading = True
            await self._redispatch()
        await asyncio.to_thread(self._ctx.projections.catch_up)
        await self._handle_lost_agents()
        await self._place()

    async def _place(self) -> None:
        queued_rows, agents = await asyncio.to_thread(self._read_state)
        if not queued_rows:
            self.waiting = {}
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue = []
        specs: dict[str, common_pb2.RunSpec] = {}
        for run_id, raw in queued_rows:
            spec = common_pb2.RunSpec()
            spec.ParseFromString(raw)
            specs[run_id] = spec
            queue.append(QueuedRun(run_id, spec.framework.name or "python", spec.resources.gpus))
        placements, waiting = place(queue, agents)
        self.decisions += len(queue)
        self.decision_seconds += loop.time() - started
        self.waiting = {w.run_id: w.reason for w in waiting}
        last = 0
        for p in placements:
            try:
                outcome = await asyncio.to_thread(self._ctx.commands.assign_run, p.run_id, p.agent_id, p.gpu_ids)
            except (ConcurrencyError, DomainError) as exc:
                log.info("assignment skipped", run_id=p.run_id, error=str(exc))
                continue
            for msg in outcome.events:
                if isinstance(msg, events_pb2.RunAssigned):
                    await self._send_work(p.run_id, msg.attempt, p.agent_id, list(p.gpu_ids), specs[p.run_id])
            last = max(last, outcome.position)
        if last:
            await asyncio.to_thread(self._ctx.projections.wait_for, last, 10.0)

    def _read_state(self) -> tuple[list[tuple[str, bytes]], list[AgentCapacity]]:
        queued = self._ctx.queries.queued_runs()
        if not queued:
            return queued, []
        holding = self._ctx.queries.holding_runs()
        used_slots: dict[str, int] = {}
        used_gpus: dict[str, set[str]] = {}
        for _run_id, agent_id, gpu_ids, *_ in holding:
            used_slots[agent_id] = used_slots.get(agent_id, 0) + 1
            used_gpus.setdefault(agent_id, set()).update(gpu_ids)
        rows = self._ctx.queries.live_agents()
        agents = []
        for row in rows:
            if not self._heartbeats.alive(row["id"]):
                continue
            gpus = [g for g in json.loads(row["gpu_ids"]) if g not in used_gpus.get(row["id"], set())]
            agents.append(
                AgentCapacity(
                    agent_id=row["id"],
                    free_slots=row["slots"] - used_slots.get(row["id"], 0),
                    free_gpu_ids=gpus,
                    frameworks=frozenset(name for name, _ in json.loads(row["frameworks"])),
                    labels=json.loads(row["labels"]),
                )
            )
        return queued, agents

    async def _send_work(
        self, run_id: str, attempt: int, agent_id: str, gpu_ids: list[str], spec: common_pb2.RunSpec
    ) -> None:
        run = await asyncio.to_thread(self._ctx.queries.get_run, run_id)
        work = agent_pb2.WorkAssignment(
            run_id=run_id,
            attempt=attempt,
            experiment_id=run.experiment_id if run else "",
            spec=spec,
            gpu_ids=gpu_ids,
        )
        await self._js.publish(
            bus.work_subject(agent_id),
            work.SerializeToString(),
            headers={"Nats-Msg-Id": f"{run_id}:{attempt}"},
        )

    async def send_cancel(self, run_id: str) -> None:
        run = await asyncio.to_thread(self._ctx.queries.get_run, run_id)
        if run is None or not run.agent_id:
            return
        control = agent_pb2.AgentControl(cancel=agent_pb2.CancelAttempt(run_id=run_id, attempt=run.attempt))
        await self._js.publish(
            bus.control_subject(run.agent_id),
            control.SerializeToString(),
            headers={"Nats-Msg-Id": f"cancel:{run_id}:{run.attempt}"},
        )

    async def _redispatch(self) -> None:
        """A new leader re-sends work and cancels that a previous one may have lost.

        JetStream's de-duplication window and the agent's attempt bookkeeping
        make a second delivery harmless.
        """
        holding = await asyncio.to_thread(self._ctx.queries.holding_runs)
        for run_id, agent_id, gpu_ids, attempt, state, cancel_requested in holding:
            if state == RS.RUN_STATE_ASSIGNED and not cancel_requested:
                raw = await asyncio.to_thread(self._ctx.queries.run_spec, run_id)
                if raw is not None:
                    await self._send_work(run_id, attempt, agent_id, gpu_ids, raw)
            if cancel_requested:
                await self.send_cancel(run_id)

    async def _handle_lost_agents(self) -> None:
        holding = await asyncio.to_thread(self._ctx.queries.holding_runs)
        by_agent: dict[str, list[str]] = {}
        for run_id, agent_id, *_ in holding:
            by_agent.setdefault(agent_id, []).append(run_id)
        for agent_id, run_ids in by_agent.items():
            if self._heartbeats.lost(agent_id):
                log.warning("agent lost", agent_id=agent_id, runs=run_ids)
                position = await asyncio.to_thread(
                    self._ctx.commands.agent_lost,
                    agent_id,
                    run_ids,
                    f"no heartbeat for {self._ctx.config.agent_timeout_s:.0f}s",
                )
                self._heartbeats.forget(agent_id)
                await asyncio.to_thread(self._ctx.projections.wait_for, position, 10.0)
