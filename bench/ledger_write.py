"""What the output ledger costs: one `OutputLedger.save` per batch of a followed run's output.

A batch is recorded (counts, event ids and content; write + rename, no fsync)
before it is sent, so a restarted agent resends it exactly (see
runyard.agent.output_ledger). Measured for a quiet run's batch (a few lines),
a typical one (200 lines and 50 points) and a full one (5,000 lines and 5,000
points, the batch limits), in the agent's work folder's file system (or
--folder). Prints JSON: per batch size, the bytes written and the median and
p99 time of one save, beside the time to serialize the same reports for
sending (what every batch costs anyway).

    .venv/bin/python bench/ledger_write.py [--repeat 300] [--folder /path]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from runyard.agent.capture import OutputOffsets, PendingReport
from runyard.agent.output_ledger import OutputLedger, encode
from runyard.v1.agent_pb2 import AgentReport
from runyard.v1.common_pb2 import LogLine, LogStream, MetricPoint


def batch(lines: int, points: int) -> OutputOffsets:
    t = time.time_ns() // 1000
    text = "epoch 3 step 1200 loss=0.4312 lr=0.0003 throughput=1532.2 samples/s"
    reports = [
        PendingReport(
            str(uuid.uuid4()),
            lines=tuple(LogLine(stream=LogStream.LOG_STREAM_STDOUT, text=text, time_us=t) for _ in range(lines)),
        )
    ]
    if points:
        reports.append(
            PendingReport(
                str(uuid.uuid4()),
                points=tuple(
                    MetricPoint(name="loss", step=i, value=0.43, time_us=t, source="stdout") for i in range(points)
                ),
            )
        )
    return OutputOffsets(100_000, 2_000, 30_000, 0, pending=tuple(reports))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(folder: Path, repeat: int) -> dict[str, object]:
    ledger = OutputLedger(folder / ".attempts" / "bench~1.output")
    result: dict[str, object] = {}
    for name, (n_lines, n_points) in {
        "quiet_3_lines": (3, 0),
        "typical_200_lines_50_points": (200, 50),
        "full_5000_5000": (5000, 5000),
    }.items():
        offsets = batch(n_lines, n_points)
        saves, serializations = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            ledger.save(offsets)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for r in offsets.pending:
                report = AgentReport(event_id=r.event_id)
                if r.lines:
                    report.logged.lines.extend(r.lines)
                else:
                    report.metrics.points.extend(r.points)
                report.SerializeToString()
            serializations.append(time.perf_counter() - t0)
        result[name] = {
            "bytes": len(encode(offsets)),
            "save_ms_p50": round(1e3 * statistics.median(saves), 3),
            "save_ms_p99": round(1e3 * percentile(saves, 0.99), 3),
            "report_serialize_ms_p50": round(1e3 * statistics.median(serializations), 3),
        }
    ledger.remove()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    if args.folder is not None:
        print(json.dumps(measure(args.folder, args.repeat), indent=2))
        return
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        print(json.dumps(measure(Path(tmp), args.repeat), indent=2))


if __name__ == "__main__":
    main()
