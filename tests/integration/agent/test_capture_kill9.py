"""kill -9 an agent's output capture again and again while a command appends to its files.

A real process (capture_resume_driver.py) follows the files with its ledger and
is SIGKILLed at arbitrary moments, then started again from the ledger, while
another process keeps printing numbered lines. Whatever was stored (first of
each event id, as the control plane keeps it) holds every line and point
exactly once, in order, with the auto-numbered steps unbroken.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

DRIVER = Path(__file__).with_name("capture_resume_driver.py")
LINES = 3000
WRITER = f"""
import json, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
with open(folder / "stdout", "a") as out, open(folder / "stderr", "a") as err, open(folder / "metrics.jsonl", "a") as m:
    for i in range({LINES}):
        out.write(f"out {{i}}\\n" + (f"loss={{i}}\\n" if i % 7 == 0 else "")); out.flush()
        if i % 3 == 0:
            err.write(f"err {{i}}\\n"); err.flush()
        if i % 5 == 0:
            m.write(json.dumps({{"acc": i}}) + "\\n"); m.flush()
        if i % 20 == 0:
            time.sleep(0.01)
    out.write("no newline at the end")
(folder / "done").touch()
"""


def stored(folder: Path) -> list[dict[str, object]]:
    first: dict[str, dict[str, object]] = {}
    order: list[str] = []
    for raw in (folder / "store.jsonl").read_text().splitlines():
        try:
            record = json.loads(raw)
        except ValueError:  # a write torn by the kill: that report was never acked
            continue
        if record["id"] not in first:
            first[record["id"]] = record
            order.append(record["id"])
    return [item for i in order for item in first[i]["items"]]  # type: ignore[attr-defined]


def test_a_capture_killed_again_and_again_stores_every_line_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(8)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    kills = 0
    deadline = time.monotonic() + 120
    try:
        while True:
            driver = subprocess.Popen([sys.executable, str(DRIVER), str(tmp_path)])
            if writer.poll() is not None and kills >= 8:
                assert driver.wait(timeout=60) == 0
                break
            try:
                driver.wait(timeout=rng.uniform(0.05, 0.6))
            except subprocess.TimeoutExpired:
                driver.send_signal(signal.SIGKILL)
                driver.wait()
                kills += 1
            assert time.monotonic() < deadline, "the writer and the captures took too long"
    finally:
        writer.kill()
        writer.wait()
    assert (tmp_path / "finished").exists()
    items = stored(tmp_path)
    out = [x["text"] for x in items if x.get("stream") == "LOG_STREAM_STDOUT"]
    err = [x["text"] for x in items if x.get("stream") == "LOG_STREAM_STDERR"]
    expected_out = [t for i in range(LINES) for t in [f"out {i}"] + ([f"loss={i}"] if i % 7 == 0 else [])]
    assert out == [*expected_out, "no newline at the end"]
    assert err == [f"err {i}" for i in range(0, LINES, 3)]
    loss = [(x.get("step", "0"), x.get("value", 0.0)) for x in items if x.get("source") == "stdout"]
    assert loss == [(str(n), float(i)) for n, i in enumerate(range(0, LINES, 7))]
    acc = [(x.get("step", "0"), x.get("value", 0.0)) for x in items if x.get("source") == "jsonl"]
    assert acc == [(str(n), float(i)) for n, i in enumerate(range(0, LINES, 5))]
    assert kills >= 8
