"""The write handlers of submit -> RUNNING alone, in process on PostgreSQL: what each hop's own commit costs.

SubmitExperiment (one run, no admission checks), loading the experiment, AssignRun, and the agent's
RunStaging and RunStarted reports through `MessageBus.execute`, 120 times after 10 warm-ups; medians in
milliseconds. Beside bench/submit_phases.py (the same hops end to end) the difference is transport:
gRPC, NATS, wake-ups and thread hand-offs.

    .venv/bin/python bench/handler_hops.py
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.app.aggregates import EXPERIMENT
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport, AssignRun, SubmitExperiment
from runyard.server.store import EventStore
from runyard.v1 import agent_pb2, events_pb2
from tests.integration.scheduling.helpers import manifest
from tests.support.databases import fresh_postgres_database

T: dict[str, list[float]] = {"submit": [], "load_experiment": [], "assign": [], "staging": [], "started": []}
with fresh_postgres_database() as url:
    store = EventStore.open(url)
    bus = MessageBus(store)
    m = manifest("one", "true", gpus=0, runs=1)
    for i in range(130):
        t0 = time.perf_counter()
        eid = bus.execute(SubmitExperiment("acct", m)).experiment_id
        t1 = time.perf_counter()
        (run_id,) = bus.load(EXPERIMENT, eid).run_ids
        t2 = time.perf_counter()
        bus.execute(AssignRun(run_id, "agent-1", []))
        t3 = time.perf_counter()
        bus.execute(
            ApplyAgentReport(
                agent_pb2.AgentReport(
                    event_id=f"{run_id}:s", agent_id="agent-1", run_id=run_id, staging=events_pb2.RunStaging(attempt=1)
                )
            )
        )
        t4 = time.perf_counter()
        bus.execute(
            ApplyAgentReport(
                agent_pb2.AgentReport(
                    event_id=f"{run_id}:t", agent_id="agent-1", run_id=run_id, started=events_pb2.RunStarted(attempt=1)
                )
            )
        )
        t5 = time.perf_counter()
        if i >= 10:
            for k, a, b in (
                ("submit", t0, t1),
                ("load_experiment", t1, t2),
                ("assign", t2, t3),
                ("staging", t3, t4),
                ("started", t4, t5),
            ):
                T[k].append((b - a) * 1000)
    store.close()
print(json.dumps({k: round(statistics.median(v), 2) for k, v in T.items()} | {"load": os.getloadavg()[0]}))
