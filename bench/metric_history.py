"""Reading a run's whole metric history through the SDK, and MLflow's get_metric_history beside it.

Runyard side: a real stack (a `runyard server` on PostgreSQL or SQLite, a
private nats-server, one `runyard agent`), one run that prints ``--points``
lines ``step I loss=X``; once the projection holds them all,
``Client.get_run_metrics(run_id)`` is timed ``--repeat`` times (the first call
warms up and is not counted). MLflow side, in the same invocation: ``mlflow
server`` on SQLite (its own venv, see bench/metrics_ingest.py), one run given
the same points with ``log_batch``, then ``MlflowClient.get_metric_history``
timed the same way.

    .venv/bin/python bench/metric_history.py [--points 10000] [--repeat 30] [--database postgresql|sqlite]
                                             [--no-mlflow]

Prints one JSON document: each side's p50 and min in milliseconds, the ratio,
and the load average before and after. ``rows_path`` is Runyard's same history
read through a names filter, row by row from metric_points (how every history
was read before the serialized metric_batches), timed in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.metrics_ingest import database, mlflow_python, mlflow_server, submit, wait_ended
from runyard.client.sdk import Client
from tests.support.services import NatsServer
from tests.support.stack import Stack

SCRIPT = """\
import sys
n = int(sys.argv[1])
out = open(1, "w", buffering=1 << 16, closefd=False)
for i in range(n):
    out.write(f"step {i} loss={1.0 / (i + 1)!r}\\n")
out.flush()
"""
PATTERN = r"step (?P<step>\d+) loss=(?P<loss>[-0-9.e]+)"


def timings_ms(call: object, repeat: int) -> dict[str, float | int]:
    assert callable(call)
    call()  # warm-up
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    took.sort()
    return {"n": repeat, "p50_ms": round(took[len(took) // 2] * 1000, 2), "min_ms": round(took[0] * 1000, 2)}


def measure_runyard(db: str, points: int, repeat: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="runyard-history-") as tmp, database(db, Path(tmp)) as url:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats.url, storage_root=(root / "objects").as_uri())
        try:
            stack.start_server()
            stack.start_agent("bench-agent", 1)
            with Client(stack.endpoint, api_key=stack.admin_key, call_timeout_s=300) as client:
                client.wait_ready(30)
                (run_id,) = submit(client, root / "run", "history", SCRIPT, f"python script.py {points}", 1, PATTERN)
                wait_ended(client, [run_id], 300)
                deadline = time.monotonic() + 120
                while len(client.get_run_metrics(run_id)) < points:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the projection never showed every point")
                    time.sleep(0.2)
                got = len(client.get_run_metrics(run_id))
                whole = timings_ms(lambda: client.get_run_metrics(run_id), repeat)
                # The same points through a names filter, which reads metric_points row by row: the way every
                # history was read before metric_batches (migration 0008), measured beside it.
                rows = timings_ms(lambda: client.get_run_metrics(run_id, ["loss"]), repeat)
                return {
                    "database": db,
                    "points": got,
                    **whole,
                    "rows_path": rows,
                    "rows_path_over_batches_p50": round(rows["p50_ms"] / whole["p50_ms"], 2),
                }
        except Exception:
            print(stack.logs(), file=sys.stderr)
            raise
        finally:
            stack.stop()
            nats.stop()


MLFLOW_DRIVER = """\
import json, sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

uri, points, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = MlflowClient(uri)
run_id = client.create_run(client.create_experiment(f"history-{time.time_ns()}")).info.run_id
for start in range(0, points, 1000):
    batch = [Metric("loss", 1.0 / (i + 1), int(time.time() * 1000), i) for i in range(start, min(points, start + 1000))]
    client.log_batch(run_id, metrics=batch)
got = len(client.get_metric_history(run_id, "loss"))  # warm-up
took = []
for _ in range(repeat):
    t = time.perf_counter()
    client.get_metric_history(run_id, "loss")
    took.append(time.perf_counter() - t)
took.sort()
print(json.dumps({"points": got, "n": repeat, "p50_ms": round(took[len(took) // 2] * 1000, 2),
                  "min_ms": round(took[0] * 1000, 2)}))
"""


def measure_mlflow(points: int, repeat: int) -> dict[str, object]:
    python = mlflow_python()
    with mlflow_server("mlflow-history-") as (root, port):
        driver = root / "driver.py"
        driver.write_text(MLFLOW_DRIVER, encoding="utf-8")
        reply = subprocess.run(
            [python, str(driver), f"http://127.0.0.1:{port}", str(points), str(repeat)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if reply.returncode != 0:
            raise RuntimeError(f"mlflow driver failed:\n{reply.stderr[-4000:]}")
        return {"backend": "sqlite", **json.loads(reply.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    result: dict[str, object] = {
        "benchmark": "metric_history",
        "goal": "Runyard's p50 < 20 ms for 10,000 points",
        "load_average_before": round(os.getloadavg()[0], 2),
    }
    result["runyard"] = ours = measure_runyard(args.database, args.points, args.repeat)
    if not args.no_mlflow:
        result["mlflow"] = theirs = measure_mlflow(args.points, args.repeat)
        result["mlflow_over_runyard_p50"] = round(theirs["p50_ms"] / ours["p50_ms"], 1)  # type: ignore[operator]
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
