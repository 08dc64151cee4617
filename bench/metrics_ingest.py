"""Metric ingestion: points per second from many concurrent runs, print-to-watcher latency, and MLflow beside it.

Runyard side: a real stack (a `runyard server` on PostgreSQL or SQLite, a private
nats-server, file storage, one `runyard agent` with a slot per run). Measured:

* **throughput**: one experiment of ``--runs`` runs, each a script printing
  ``--points`` lines ``step I loss=T`` as fast as it can (T = ``time.time()`` at
  the print; one metric point and one log line per line, block-buffered so the
  script is not what limits). Points per second *into the log* run from the
  first print to the append of the last point (the append times come from
  replaying each run's WatchRun history afterwards, so no watcher competes with
  the load); *into the projection* to the moment ``GetRunMetrics`` shows every
  run's last point (polled every 50 ms with a ``names`` filter).
* **latency**: a run printing a point every 10 ms, flushed, whose value is the
  print time; a live ``WatchRun`` takes the difference on arrival. Once on an
  idle stack, once beside the throughput runs (``under_load``). The log
  latency of every load point (print to append) is reported too.

MLflow side, on the same machine in the same invocation: ``mlflow server`` with a
SQLite backend store on a free loopback port (its default 4 workers), driven by
``--runs`` processes that each create a run and send the same points (key
``loss``, value the send time, steps 0..N-1) with ``MlflowClient.log_batch`` in
batches of 1,000 (the most MLflow takes per call) until done or ``--mlflow-seconds``
pass (``same_load``); then by one process alone (``one_client``), which is
MLflow's best case here because its SQLite writers contend. log_batch returns
once the points are committed, which makes its rate the counterpart of Runyard's
projection rate; the ratios divide Runyard's by MLflow's same-load rate and by
its best case. MLflow's dependencies conflict with Runyard's, so it lives in
its own venv, created on first use at ``.bench/mlflow-venv`` (git-ignored) with
``pip install mlflow``.

    .venv/bin/python bench/metrics_ingest.py [--runs 8] [--points 100000] [--database postgresql|sqlite]
                                             [--mlflow-seconds 15] [--no-mlflow]

Where the time goes (``where_the_time_goes``): a plain NATS subscription beside
the ingest's keeps every agent report with its arrival time (decoded only once
the load is over), so each point's way splits into print -> agent read (the
point's time, stamped when the agent read the line) -> sent (on NATS) ->
appended (its event's time) -> watched (the probe's WatchRun), for both probes
and for every load point.

Prints one JSON document: both rates, their ratio (goal, issue 12: Runyard >= 30x MLflow's best case),
latency p50/p99 in milliseconds, the CPU seconds each Runyard process used under
load, and the machine's load average before and after (other work on a shared
machine moves every figure here). ``BENCH_LOGS=FILE`` keeps the server and agent
logs. Under load, ``of_which_print_to_agent_read`` is mostly the script's own
64 KiB buffer and the pipe's: a script printing faster than the agent reads is
held back there, which bounds the agent's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.client.sdk import Client
from runyard.v1 import agent_pb2, common_pb2, watch_pb2
from tests.support.services import NatsServer, free_port, postgres_database, wait_for_port
from tests.support.stack import Stack

REPO = Path(__file__).resolve().parent.parent
MLFLOW_VENV = REPO / ".bench" / "mlflow-venv"
ENDED = {common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_CANCELED}

LOAD_PY = """\
import sys, time
n = int(sys.argv[1])
out = open(1, "w", buffering=1 << 16, closefd=False)  # block-buffered: the script must not be the limit
write, now = out.write, time.time
for i in range(n):
    write(f"step {i} loss={now()!r}\\n")
write(f"step {n} loss={now()!r} done=1\\n")
out.flush()
"""

PROBE_PY = """\
import sys, time
n, every = int(sys.argv[1]), float(sys.argv[2])
time.sleep(1.0)  # let the watcher attach before the first point
for i in range(n):
    print(f"step {i} lat={time.time()!r}", flush=True)
    time.sleep(every)
"""

# One pattern per experiment, as a manifest would have: `done` only on a load run's last line.
LOAD_PATTERN = r"step (?P<step>\d+) loss=(?P<loss>[-0-9.e]+)(?: done=(?P<done>\d+))?"
PROBE_PATTERN = r"step (?P<step>\d+) lat=(?P<lat>[-0-9.e]+)"


def manifest(name: str, command: str, runs: int, pattern: str) -> str:
    values = ", ".join(str(i) for i in range(runs))
    return textwrap.dedent(
        f"""\
        name: {name}
        framework: {{name: python}}
        command: {command}
        resources: {{gpus: 0, cpus: 1}}
        results: s3://results/{name}
        hyperparameters:
          i: {{type: categorical, values: [{values}]}}
        search: {{method: grid}}
        metrics:
          patterns:
            - '{pattern}'
        """
    )


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by the given processes, by role, plus every PostgreSQL backend.

    The agent's reaped children are the run scripts. PostgreSQL's figure counts
    every backend on the machine (other databases too), so it is an upper bound.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def times(pid: int | str) -> tuple[float, float]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0, 0.0
        return (int(stat[11]) + int(stat[12])) / tick, (int(stat[13]) + int(stat[14])) / tick

    used: dict[str, float] = {}
    for role, members in pids.items():
        for pid in members:
            own, children = times(pid)
            used[role] = used.get(role, 0.0) + own
            if role == "agent":
                used["run scripts"] = used.get("run scripts", 0.0) + children
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    used["postgresql"] = used.get("postgresql", 0.0) + times(entry)[0]
    return used


def stack_pids(stack: Stack, nats: NatsServer) -> dict[str, list[int]]:
    return {
        "server": [p.popen.pid for p in stack.servers if p.popen is not None],
        "agent": [p.popen.pid for p in stack.agents if p.popen is not None],
        "nats": [nats.proc.pid] if nats.proc is not None else [],
    }


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    return {k: round(v, 1) for k, v in sorted(used.items(), key=lambda kv: -kv[1])}


def percentiles_ms(seconds: list[float]) -> dict[str, float | int]:
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1)

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


@contextlib.contextmanager
def database(kind: str, root: Path) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{root}/runyard.db"


# -- Runyard ---------------------------------------------------------------------------------


@dataclass
class LatencyProbe:
    """A live WatchRun of one probe run: print-to-arrival delay of each `lat` point."""

    client: Client
    run_id: str
    delays: list[float] = field(default_factory=list)
    #: Per point: (step, printed, agent read, appended to the log, arrived at the watcher), in seconds.
    stages: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    error: str = ""

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            for update in self.client.watch_run(self.run_id):
                if update.HasField("metrics"):
                    now = time.time()
                    appended = update.time.ToMicroseconds() / 1e6
                    for p in update.metrics.points:
                        if p.name == "lat":
                            self.delays.append(now - p.value)
                            self.stages.append((p.step, p.value, p.time_us / 1e6, appended, now))
        except Exception as e:  # reported in the result, not raised in a thread
            self.error = repr(e)

    @property
    def run_ids(self) -> set[str]:
        return {self.run_id}

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ReportTap:
    """Every agent report as it reaches NATS (a plain subscription beside the ingest's), with its arrival time.

    Kept raw while the load runs (no parsing on the measured machine's time) and
    decoded afterwards: it splits a point's way into print -> agent read (the
    point's time) -> sent (here) -> appended (the event's time) -> watched.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.raw: list[tuple[float, bytes]] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _run(self) -> None:
        import nats

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await nats.connect(self.url)
        raw, now = self.raw, time.time

        async def take(msg: object) -> None:
            raw.append((now(), msg.data))  # type: ignore[attr-defined]

        await nc.subscribe("runyard.reports.*", cb=take, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)
        self._ready.set()
        await self._stop.wait()
        await nc.drain()

    def close(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def sent_at(self, run_ids: set[str], name: str) -> dict[tuple[str, int], float]:
        """(run, step) -> when the report holding that point reached NATS (its first send)."""
        seen: dict[tuple[str, int], float] = {}
        for arrived, data in self.raw:
            report = agent_pb2.AgentReport()
            report.ParseFromString(data)
            if report.run_id in run_ids and report.HasField("metrics"):
                for p in report.metrics.points:
                    if p.name == name:
                        seen.setdefault((report.run_id, p.step), arrived)
        return seen


def stages_ms(rows: Sequence[tuple[float, ...]]) -> dict[str, dict[str, float | int]]:
    """Percentiles of each stage of rows (printed, read, sent, appended[, watched]), and of the whole."""
    names = ["print_to_agent_read", "read_to_sent", "sent_to_appended", "appended_to_watch"]
    out = {}
    for i, name in enumerate(names[: len(rows[0]) - 1] if rows else []):
        out[name] = percentiles_ms([r[i + 1] - r[i] for r in rows])
    if rows:
        out["total"] = percentiles_ms([r[-1] - r[0] for r in rows])
    return out


def probe_stages(probe: LatencyProbe, sent: dict[tuple[str, int], float]) -> dict[str, dict[str, float | int]]:
    rows = [
        (printed, read, sent[(probe.run_id, step)], appended, watched)
        for step, printed, read, appended, watched in probe.stages
        if (probe.run_id, step) in sent
    ]
    return stages_ms(rows)


def submit(client: Client, folder: Path, name: str, script: str, command: str, runs: int, pattern: str) -> list[str]:
    folder.mkdir(parents=True)
    (folder / "script.py").write_text(script, encoding="utf-8")
    (folder / "runyard.yaml").write_text(manifest(name, command, runs, pattern), encoding="utf-8")
    experiment = client.submit(folder / "runyard.yaml", folder)
    return [r.id for r in experiment.runs]


def wait_ended(client: Client, run_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for run_id in run_ids:
        while (run := client.get_run(run_id)).state not in ENDED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {common_pb2.RunState.Name(run.state)} after {timeout}s")
            time.sleep(0.1)
        if run.state != common_pb2.RUN_STATE_COMPLETED:
            raise RuntimeError(f"run {run_id} ended {common_pb2.RunState.Name(run.state)}: {run.message}")


def latency_run(client: Client, root: Path, name: str, points: int) -> tuple[list[str], LatencyProbe]:
    (run_id,) = submit(client, root / name, name, PROBE_PY, f"python script.py {points} 0.01", 1, PROBE_PATTERN)
    return [run_id], LatencyProbe(client, run_id)


def history(client: Client, run_id: str) -> list[watch_pb2.RunUpdate]:
    return [u for u in client.watch_run(run_id) if u.HasField("metrics")]


def measure_runyard(db: str, runs: int, points: int, probe_points: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="runyard-ingest-") as tmp, database(db, Path(tmp)) as url:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats.url, storage_root=(root / "objects").as_uri())
        tap = ReportTap(nats.url)
        try:
            stack.start_server()
            stack.start_agent("bench-agent", runs + 1)
            with Client(stack.endpoint, api_key=stack.admin_key, call_timeout_s=300) as client:
                client.wait_ready(30)
                # Idle latency (also warms up the agent and the server).
                probe_ids, probe = latency_run(client, root, "latency-idle", probe_points)
                wait_ended(client, probe_ids, 120)
                probe.join(30)
                idle, idle_error = probe.delays, probe.error
                idle_probe = probe

                # Throughput, with a latency probe beside it.
                probe_ids, probe = latency_run(client, root, "latency-load", probe_points)
                cpu_before = cpu_seconds(stack_pids(stack, nats))
                command = f"python script.py {points}"
                load_ids = submit(client, root / "load", "ingest-load", LOAD_PY, command, runs, LOAD_PATTERN)
                projected_at: dict[str, float] = {}
                deadline = time.monotonic() + 900
                while len(projected_at) < len(load_ids):
                    for run_id in load_ids:
                        if run_id not in projected_at and client.get_run_metrics(run_id, ["done"]):
                            projected_at[run_id] = time.time()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"only {len(projected_at)} of {runs} runs fully projected:\n{stack.logs()}")
                    time.sleep(0.05)
                cpu_after = cpu_seconds(stack_pids(stack, nats))
                wait_ended(client, load_ids + probe_ids, 120)
                probe.join(30)
                under_load = probe.delays
                tap.close()
                sent = tap.sent_at({*load_ids, *probe_ids, *idle_probe.run_ids}, "loss")
                sent.update(tap.sent_at({*probe_ids, *idle_probe.run_ids}, "lat"))
                load_stages: list[tuple[float, ...]] = []

                # Afterwards: when each point was printed (its value) and appended (its event's time).
                first_print = float("inf")
                last_append = 0.0
                log_delays: list[float] = []
                read_delays: list[float] = []
                total = 0
                for run_id in load_ids:
                    for update in history(client, run_id):
                        appended = update.time.ToMicroseconds() / 1e6
                        for p in update.metrics.points:
                            if p.name == "loss":
                                first_print = min(first_print, p.value)
                                log_delays.append(appended - p.value)
                                read_delays.append(p.time_us / 1e6 - p.value)
                                if (at := sent.get((run_id, p.step))) is not None:
                                    load_stages.append((p.value, p.time_us / 1e6, at, appended))
                            total += 1
                        last_append = max(last_append, appended)
                spans = [
                    (r.started_at.ToMicroseconds() / 1e6, r.ended_at.ToMicroseconds() / 1e6)
                    for r in (client.get_run(run_id) for run_id in load_ids)
                ]
                concurrent = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
                expected = runs * (points + 2)  # and the last line's loss and done
                if total != expected:
                    raise RuntimeError(f"{total} points in the log, expected {expected}")
                to_log = last_append - first_print
                to_projection = max(projected_at.values()) - first_print
                return {
                    "database": db,
                    "runs": runs,
                    "points": total,
                    "most_runs_at_once": concurrent,
                    "seconds_to_log": round(to_log, 2),
                    "points_per_s_log": round(total / to_log),
                    "seconds_to_projection": round(to_projection, 2),
                    "points_per_s_projection": round(total / to_projection),
                    "latency_print_to_watch": {
                        "idle": percentiles_ms(idle),
                        "under_load": percentiles_ms(under_load),
                        "probe": f"{probe_points} points, one per 10 ms, live WatchRun",
                    },
                    "latency_print_to_log_under_load": percentiles_ms(log_delays),
                    "of_which_print_to_agent_read": percentiles_ms(read_delays),
                    "where_the_time_goes": {
                        "idle_probe": probe_stages(idle_probe, sent),
                        "probe_under_load": probe_stages(probe, sent),
                        "load_points": stages_ms(load_stages),
                        "reports_seen_on_nats": len(tap.raw),
                    },
                    "cpu_seconds_during_load": cpu_used(cpu_before, cpu_after),
                    "probe_errors": [e for e in (idle_error, probe.error) if e],
                }
        except Exception:
            print(stack.logs(), file=sys.stderr)
            raise
        finally:
            tap.close()
            stack.stop()
            nats.stop()
            if os.environ.get("BENCH_LOGS"):
                logs = "\n".join(f"===== {p.name}\n{p.output()}" for p in [*stack.servers, *stack.agents])
                Path(os.environ["BENCH_LOGS"]).write_text(logs, encoding="utf-8")


# -- MLflow ----------------------------------------------------------------------------------

MLFLOW_DRIVER = """\
import json, multiprocessing as mp, sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

uri, runs, points, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

def worker(exp_id, start_at, deadline, q):
    client = MlflowClient(uri)
    run_id = client.create_run(exp_id).info.run_id
    while time.time() < start_at:
        time.sleep(0.001)
    sent, errors, t0 = 0, 0, time.time()
    while sent < points and time.time() < deadline:
        n = min(1000, points - sent)
        now = time.time()
        batch = [Metric("loss", now, int(now * 1000), sent + j) for j in range(n)]
        try:
            client.log_batch(run_id, metrics=batch)
        except Exception:
            errors += 1
            continue
        sent += n
    q.put({"run_id": run_id, "sent": sent, "errors": errors, "start": t0, "end": time.time()})

if __name__ == "__main__":
    client = MlflowClient(uri)
    exp_id = client.create_experiment(f"ingest-{time.time_ns()}")
    start_at = time.time() + 3.0
    q = mp.Queue()
    procs = [mp.Process(target=worker, args=(exp_id, start_at, start_at + seconds, q)) for _ in range(runs)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    stored = sum(len(client.get_metric_history(r["run_id"], "loss")) for r in results[:1])
    print(json.dumps({"results": results, "stored_in_first_run": stored}))
"""


def mlflow_python() -> Path:
    """The MLflow venv's interpreter, creating the venv on first use."""
    python = MLFLOW_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import mlflow"], capture_output=True).returncode == 0:
        return python
    print(f"installing MLflow into {MLFLOW_VENV} (first use; a few minutes)...", file=sys.stderr)
    MLFLOW_VENV.parent.mkdir(parents=True, exist_ok=True)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([base, "-m", "venv", str(MLFLOW_VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "mlflow"], check=True)
    return python


def mlflow_version(python: Path) -> str:
    out = subprocess.run([python, "-c", "import mlflow; print(mlflow.__version__)"], capture_output=True, text=True)
    return out.stdout.strip()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
            if reply.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"mlflow server not healthy at {url} after {timeout}s")


def drive_mlflow(python: Path, root: Path, port: int, runs: int, points: int, seconds: float) -> dict[str, object]:
    """`runs` client processes, each logging `points` to its own run (or until `seconds` pass)."""
    driver = root / "driver.py"
    driver.write_text(MLFLOW_DRIVER, encoding="utf-8")
    reply = subprocess.run(
        [python, str(driver), f"http://127.0.0.1:{port}", str(runs), str(points), str(seconds)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=seconds + 300,
    )
    if reply.returncode != 0:
        raise RuntimeError(f"mlflow driver failed:\n{reply.stderr[-4000:]}")
    results = json.loads(reply.stdout.strip().splitlines()[-1])["results"]
    sent = sum(r["sent"] for r in results)
    took = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "runs": runs,
        "points": sent,
        "all_sent": sent == runs * points,
        "errors": sum(r["errors"] for r in results),
        "seconds": round(took, 2),
        "points_per_s": round(sent / took),
    }


@contextlib.contextmanager
def mlflow_server(prefix: str) -> Iterator[tuple[Path, int]]:
    """An MLflow tracking server on SQLite in a temporary folder: (that folder, its port); stopped after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        port = free_port()
        log = root / "mlflow-server.log"
        argv = [
            str(MLFLOW_VENV / "bin" / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with open(log, "wb") as out:
            server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
        try:
            wait_for_port(port, timeout=120)
            wait_http(f"http://127.0.0.1:{port}/health", server, log)
            yield root, port
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 15)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()


def measure_mlflow(runs: int, points: int, seconds: float) -> dict[str, object]:
    """The same load on MLflow (`runs` concurrent clients), then one client alone: its best case here."""
    python = mlflow_python()
    with mlflow_server("mlflow-ingest-") as (root, port):
        concurrent = drive_mlflow(python, root, port, runs, points, seconds)
        alone = drive_mlflow(python, root, port, 1, points, seconds)
        return {
            "version": mlflow_version(python),
            "backend": "sqlite",
            "server_workers": 4,
            "batch": 1000,
            "same_load": concurrent,
            "one_client": alone,
            "best_points_per_s": max(int(concurrent["points_per_s"]), int(alone["points_per_s"])),  # type: ignore[call-overload]
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="concurrent runs (and MLflow client processes)")
    parser.add_argument("--points", type=int, default=100_000, help="points each run reports")
    parser.add_argument("--probe-points", type=int, default=300, help="points of each latency probe run")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--mlflow-seconds", type=float, default=15.0, help="each MLflow load stops after this long")
    parser.add_argument("--no-mlflow", action="store_true", help="Runyard only")
    args = parser.parse_args()

    result: dict[str, object] = {
        "benchmark": "metrics_ingest",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": round(os.getloadavg()[0], 2),
        },
        "goal": "points/s into the projection >= 30x MLflow's best case; print -> WatchRun p99 < 100 ms idle, "
        "< 250 ms under the load",
    }
    result["runyard"] = runyard = measure_runyard(args.database, args.runs, args.points, args.probe_points)
    if not args.no_mlflow:
        result["mlflow"] = mlflow = measure_mlflow(args.runs, args.points, args.mlflow_seconds)
        same = mlflow["same_load"]["points_per_s"]  # type: ignore[index]
        ours = runyard["points_per_s_projection"]
        result["ratio_vs_mlflow_same_load"] = round(ours / same, 1)  # type: ignore[operator]
        result["ratio_vs_mlflow_best_case"] = round(ours / mlflow["best_points_per_s"], 1)  # type: ignore[operator]
    result["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)  # type: ignore[index]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
