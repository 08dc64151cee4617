"""A capture of output files resumed by a restarted agent: nothing lost, nothing twice (OutputLedger)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from runyard.agent.capture import BatchLimits, Capture, OutputOffsets, PendingReport
from runyard.agent.metrics import StdoutMetricParser, compile_patterns
from runyard.agent.output_ledger import OutputLedger, decode, encode
from runyard.v1.common_pb2 import LogLine, LogStream, MetricPoint

STDOUT, STDERR, AGENT = LogStream.LOG_STREAM_STDOUT, LogStream.LOG_STREAM_STDERR, LogStream.LOG_STREAM_AGENT
DEADLINE_S = 10.0


class Store:
    """The control plane's side, as far as output goes: a report is stored once per event id."""

    def __init__(self) -> None:
        self.reports: dict[str, tuple[LogLine, ...] | tuple[MetricPoint, ...]] = {}
        self.order: list[str] = []

    def put(self, event_id: str, items: tuple[LogLine, ...] | tuple[MetricPoint, ...]) -> None:
        assert event_id, "a capture with a ledger names every report"
        if event_id not in self.reports:
            self.reports[event_id] = items
            self.order.append(event_id)

    def lines(self, stream: LogStream.ValueType) -> list[str]:
        return [x.text for i in self.order for x in self.reports[i] if isinstance(x, LogLine) and x.stream == stream]

    def points(self, source: str) -> list[tuple[str, int, float]]:
        return [
            (p.name, p.step, p.value)
            for i in self.order
            for p in self.reports[i]
            if isinstance(p, MetricPoint) and p.source == source
        ]


class DyingSink:
    """Sends into a Store; on its `die_at`th report the agent 'dies': it hangs, before or after the store took it."""

    def __init__(self, store: Store, die_at: int | None = None, stored_first: bool = False) -> None:
        self.store = store
        self.die_at = die_at
        self.stored_first = stored_first
        self.sent = 0
        self.dead = asyncio.Event()
        self.last: tuple[str, tuple[LogLine, ...] | tuple[MetricPoint, ...]] | None = None

    async def _send(self, event_id: str, items: tuple[LogLine, ...] | tuple[MetricPoint, ...]) -> None:
        self.sent += 1
        if self.sent == self.die_at:
            self.last = (event_id, items)
            if self.stored_first:
                self.store.put(event_id, items)
            self.dead.set()
            await asyncio.Event().wait()  # never acked
        self.store.put(event_id, items)

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
        await self._send(event_id, tuple(LogLine(stream=x.stream, text=x.text, time_us=x.time_us) for x in lines))

    async def metrics(self, points: Sequence[MetricPoint], event_id: str = "") -> None:
        await self._send(event_id, tuple(MetricPoint().__class__.FromString(p.SerializeToString()) for p in points))


def append(path: Path, data: str) -> None:
    with path.open("a") as f:
        f.write(data)


def write_some(folder: Path, start: int, stop: int) -> None:
    """Numbered lines on stdout (every third a loss, no step: auto-numbered), stderr and runyard.log (no step)."""
    for i in range(start, stop):
        append(folder / "stdout", f"out {i}\n" + (f"loss={i}\n" if i % 3 == 0 else ""))
        append(folder / "stderr", f"err {i}\n")
        append(folder / "metrics.jsonl", json.dumps({"acc": i}) + "\n")


def new_capture(folder: Path, sink: DyingSink, ledger: OutputLedger) -> Capture:
    parser = StdoutMetricParser(compile_patterns([r"loss=(?P<loss>[0-9.]+)"])[0])
    limits = BatchLimits(interval_s=0.005, max_lines=7, max_points=5)  # many small batches
    return Capture(sink, parser, folder / "metrics.jsonl", limits, tail_interval_s=0.005, ledger=ledger)


async def until(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), DEADLINE_S)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("stored_first", [False, True], ids=["died-before-stored", "died-after-stored"])
@pytest.mark.parametrize("die_at", [1, 2, 9, 20])
def test_a_restarted_capture_resumes_with_nothing_lost_or_repeated(
    tmp_path: Path, die_at: int, stored_first: bool
) -> None:
    ledger = OutputLedger(tmp_path / ".attempts" / "r~1.output")
    store = Store()

    async def first_agent() -> tuple[str, tuple[LogLine, ...] | tuple[MetricPoint, ...]]:
        sink = DyingSink(store, die_at, stored_first)
        capture = new_capture(tmp_path, sink, ledger)
        capture.start()
        capture.agent_line("staged 1 code file")
        capture.attach_files(tmp_path / "stdout", tmp_path / "stderr")
        write_some(tmp_path, 0, 40)
        await until(sink.dead, "the sink to die")
        # kill -9: nothing of this capture runs any more.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        assert sink.last is not None
        return sink.last

    async def second_agent() -> list[str]:
        sink = DyingSink(store)
        saved = ledger.load()
        assert saved is not None
        capture = new_capture(tmp_path, sink, ledger)
        capture.start()
        capture.attach_files(tmp_path / "stdout", tmp_path / "stderr", saved)
        write_some(tmp_path, 60, 70)
        await capture.drain()
        await capture.close()
        return [p.event_id for p in saved.pending]

    died_on = asyncio.run(first_agent())
    write_some(tmp_path, 40, 60)  # the command goes on while no agent watches
    resent = asyncio.run(second_agent())

    assert died_on[0] in resent, "the batch on its way is sent again under its own id"
    assert store.reports[died_on[0]] == died_on[1], "...with the very same content"
    assert store.lines(STDOUT) == [t for i in range(70) for t in [f"out {i}"] + ([f"loss={i}"] if i % 3 == 0 else [])]
    assert store.lines(STDERR) == [f"err {i}" for i in range(70)]
    assert store.points("stdout") == [("loss", n, float(i)) for n, i in enumerate(range(0, 70, 3))]
    assert store.points("jsonl") == [("acc", i, float(i)) for i in range(70)]
    assert store.lines(AGENT) == ["staged 1 code file"]


def test_the_ledger_round_trips_counts_and_the_pending_batch(tmp_path: Path) -> None:
    pending = (
        PendingReport("a", lines=(LogLine(stream=STDOUT, text="x\u00e9", time_us=5), LogLine(stream=AGENT, text="y"))),
        PendingReport("b", points=(MetricPoint(name="loss", step=3, value=0.5, time_us=7, source="stdout"),)),
    )
    offsets = OutputOffsets(1, 2, 3, 4, (("logs/train/events.out.tfevents.1", 5),), pending=pending)
    assert decode(encode(offsets)) == offsets
    ledger = OutputLedger(tmp_path / "state" / "r~1.output")
    assert ledger.load() is None
    ledger.save(offsets)
    assert ledger.load() == offsets
    newer = OutputOffsets(7, 2, 3, 4)
    ledger.save(newer)
    assert ledger.load() == newer
    assert OutputLedger(ledger.path).load() == newer  # what a restarted agent reads
    # A slot torn mid-write (a host crash) fails its check: the record before it is read.
    torn = ledger.path.with_name(ledger.path.name + ".0")  # the second save's slot (they alternate)
    torn.write_bytes(torn.read_bytes()[:-3])
    assert OutputLedger(ledger.path).load() == offsets
    ledger.remove()
    assert not list(ledger.path.parent.iterdir())


@pytest.mark.parametrize("die_at", [1, 2, 4])
def test_tensorboard_points_of_several_files_resume_per_file(tmp_path: Path, die_at: int) -> None:
    """Two event files read in turns: which file's points were sent is counted per file, so a
    resumed capture passes over exactly those, however the turns fall the second time."""
    from torch.utils.tensorboard import SummaryWriter

    result = tmp_path / "result"
    ledger = OutputLedger(tmp_path / ".attempts" / "r~1.output")
    store = Store()
    writers = {name: SummaryWriter(str(result / name)) for name in ("a", "b")}

    def write(steps: range) -> None:
        for step in steps:
            for name, writer in writers.items():
                writer.add_scalar(f"loss_{name}", float(step), step)
                writer.flush()

    def new(sink: DyingSink) -> Capture:
        limits = BatchLimits(interval_s=0.005, max_points=7)
        return Capture(
            sink, StdoutMetricParser([]), None, limits, tail_interval_s=0.005, tensorboard_dir=result, ledger=ledger
        )

    async def first_agent() -> None:
        sink = DyingSink(store, die_at)
        capture = new(sink)
        capture.start()
        capture.attach_files(tmp_path / "stdout", tmp_path / "stderr")
        write(range(0, 15))
        await until(sink.dead, "the sink to die")
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def second_agent() -> None:
        capture = new(DyingSink(store))
        capture.start()
        capture.attach_files(tmp_path / "stdout", tmp_path / "stderr", ledger.load())
        write(range(25, 30))
        for writer in writers.values():
            writer.close()
        await capture.drain()
        await capture.close()

    asyncio.run(first_agent())
    write(range(15, 25))
    asyncio.run(second_agent())
    points = store.points("tensorboard")
    for name in ("loss_a", "loss_b"):
        assert [(step, value) for n, step, value in points if n == name] == [(s, float(s)) for s in range(30)]
