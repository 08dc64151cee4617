"""An agent's output capture in a process of its own, for the kill -9 test (test_capture_kill9).

Usage: capture_resume_driver.py FOLDER. Follows FOLDER/stdout, FOLDER/stderr and
FOLDER/metrics.jsonl with the ledger FOLDER/ledger.output, resuming from it, and
"stores" each report by appending it, with its event id, to FOLDER/store.jsonl
(the control plane's side: the reader keeps the first of each id). Once
FOLDER/done exists (the command exited) it drains, closes and writes FOLDER/finished.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format

from runyard.agent.capture import BatchLimits, Capture
from runyard.agent.metrics import StdoutMetricParser, compile_patterns
from runyard.agent.output_ledger import OutputLedger
from runyard.v1.common_pb2 import LogLine, MetricPoint


class FileStore:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _put(self, event_id: str, kind: str, items: Sequence[LogLine] | Sequence[MetricPoint]) -> None:
        record = {"id": event_id, "kind": kind, "items": [json_format.MessageToDict(x) for x in items]}
        os.write(self._fd, (json.dumps(record) + "\n").encode())

    # A send takes a while on either side of the store taking it (NATS, the ack): a kill lands
    # in the middle of one often, before or after it was stored.

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
        await asyncio.sleep(0.004)
        self._put(event_id, "lines", lines)
        await asyncio.sleep(0.004)

    async def metrics(self, points: Sequence[MetricPoint], event_id: str = "") -> None:
        await asyncio.sleep(0.004)
        self._put(event_id, "points", points)
        await asyncio.sleep(0.004)


async def main(folder: Path) -> None:
    ledger = OutputLedger(folder / "ledger.output")
    parser = StdoutMetricParser(compile_patterns([r"loss=(?P<loss>[0-9.]+)"])[0])
    limits = BatchLimits(interval_s=0.01, busy_interval_s=0.02, max_lines=50, max_points=20)
    capture = Capture(
        FileStore(folder / "store.jsonl"), parser, folder / "metrics.jsonl", limits, tail_interval_s=0.01, ledger=ledger
    )
    capture.start()
    capture.attach_files(folder / "stdout", folder / "stderr", ledger.load())
    while not (folder / "done").exists():
        await asyncio.sleep(0.01)
    await capture.drain()
    await capture.close()
    (folder / "finished").touch()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
