"""Batching of log lines and metric points, and line cutting from raw pipes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from runyard.agent.capture import MAX_LINE_BYTES, BatchLimits, Capture, PendingBatch
from runyard.agent.metrics import StdoutMetricParser, compile_patterns
from runyard.v1.common_pb2 import LogLine, LogStream, MetricPoint

STDOUT = LogStream.LOG_STREAM_STDOUT
AGENT = LogStream.LOG_STREAM_AGENT


def line(text: str) -> LogLine:
    return LogLine(stream=STDOUT, text=text, time_us=0)


def test_batch_is_due_after_the_interval_or_when_full() -> None:
    batch = PendingBatch(BatchLimits(interval_s=0.1, max_lines=3))
    assert batch.seconds_until_due(0.0) is None  # nothing to send
    batch.add_line(line("a"), now=10.0)
    assert batch.seconds_until_due(10.04) is not None
    assert abs(batch.seconds_until_due(10.04) - 0.06) < 1e-9  # type: ignore[operator]
    assert batch.seconds_until_due(10.2) == 0.0
    batch.add_line(line("b"), now=10.01)
    batch.add_line(line("c"), now=10.02)
    assert batch.full and batch.seconds_until_due(10.02) == 0.0


def test_a_chatty_runs_next_batch_waits_the_busy_interval() -> None:
    limits = BatchLimits(interval_s=0.1, busy_interval_s=0.5, busy_items=3, max_lines=100)
    batch = PendingBatch(limits)
    for i in range(3):
        batch.add_line(line(str(i)), now=0.0)
    assert batch.seconds_until_due(0.0) == 0.1
    assert len(batch.take(0)[0]) == 3
    batch.add_line(line("next"), now=1.0)
    assert batch.seconds_until_due(1.0) == 0.5  # the last batch was big: this one collects longer
    assert len(batch.take(0)[0]) == 1
    batch.add_line(line("quiet again"), now=3.0)
    assert abs(batch.seconds_until_due(3.0) - 0.1) < 1e-9  # type: ignore[operator]


def test_take_respects_line_byte_and_point_limits() -> None:
    batch = PendingBatch(BatchLimits(max_lines=2, max_bytes=1000, max_points=2))
    for i in range(5):
        batch.add_line(line(f"l{i}"), now=0)
    batch.add_points([MetricPoint(name="m", step=i) for i in range(3)], now=0)
    taken = [batch.take(0) for _ in range(3)]
    assert [[x.text for x in lines] for lines, _ in taken] == [["l0", "l1"], ["l2", "l3"], ["l4"]]
    assert [len(points) for _, points in taken] == [2, 1, 0]
    assert batch.empty

    big = PendingBatch(BatchLimits(max_lines=100, max_bytes=100))
    for _ in range(3):
        big.add_line(line("x" * 60), now=0)
    assert [len(big.take(0)[0]) for _ in range(3)] == [1, 1, 1]  # one 60-byte line per 100-byte batch


def test_lines_beyond_the_pending_limit_are_counted_and_reported() -> None:
    batch = PendingBatch(BatchLimits(max_pending_lines=2, max_lines=10))
    for i in range(5):
        batch.add_line(line(str(i)), now=0)
    lines, _ = batch.take(0)
    assert [x.text for x in lines[:2]] == ["0", "1"]
    assert lines[2].stream == AGENT and lines[2].text.startswith("3 log lines dropped")
    assert batch.empty


class Sink:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
        self.batches.append(("logged", [f"{LogStream.Name(x.stream)[11:]}:{x.text}" for x in lines]))

    async def metrics(self, points: Sequence[MetricPoint], event_id: str = "") -> None:
        self.batches.append(("metrics", [f"{p.source}:{p.name}@{p.step}={p.value:g}" for p in points]))


def feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_capture_cuts_lines_parses_metrics_and_flushes_everything_on_close(tmp_path: Path) -> None:
    metrics_file = tmp_path / "metrics.jsonl"
    metrics_file.write_text(json.dumps({"step": 1, "acc": 0.5}) + "\n" + '{"step": 2, "acc": 0.75}')

    async def scenario() -> tuple[Sink, Capture]:
        sink = Sink()
        parser = StdoutMetricParser(compile_patterns([r"loss=(?P<loss>[0-9.]+)"])[0])
        capture = Capture(sink, parser, metrics_file, BatchLimits(interval_s=10.0))
        capture.start()
        capture.agent_line("staged")
        out = b"first\r\nloss=0.5\n" + b"y" * (MAX_LINE_BYTES + 10) + b"\nno newline at end"
        capture.attach(feed(out), feed(b"warn 1\nTraceback: boom\n\n"))
        await capture.drain()
        await capture.close()
        return sink, capture

    sink, capture = asyncio.run(scenario())
    logged = [t for kind, texts in sink.batches if kind == "logged" for t in texts]
    metrics = [t for kind, texts in sink.batches if kind == "metrics" for t in texts]
    assert logged[0] == "AGENT:staged"
    stdout = [t[7:] for t in logged if t.startswith("STDOUT:")]
    assert stdout[:2] == ["first", "loss=0.5"]
    assert [len(t) for t in stdout[2:4]] == [MAX_LINE_BYTES, 10]  # an over-long line is split
    assert stdout[4] == "no newline at end"
    assert [t for t in logged if t.startswith("STDERR:")] == ["STDERR:warn 1", "STDERR:Traceback: boom", "STDERR:"]
    assert capture.last_stderr == "Traceback: boom"
    # The unterminated last JSON line counts once the process is gone.
    assert sorted(metrics) == ["jsonl:acc@1=0.5", "jsonl:acc@2=0.75", "stdout:loss@0=0.5"]


def test_capture_sends_a_quiet_runs_first_line_within_the_interval() -> None:
    async def scenario() -> tuple[list[tuple[str, list[str]]], float]:
        sink = Sink()
        capture = Capture(sink, StdoutMetricParser([]), None, BatchLimits(interval_s=0.05))
        capture.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        capture.agent_line("hello")
        while not sink.batches:
            await asyncio.sleep(0.005)
        took = loop.time() - t0
        await capture.close()
        return sink.batches, took

    batches, took = asyncio.run(scenario())
    assert batches == [("logged", ["AGENT:hello"])]
    assert 0.04 <= took < 1.0


def test_capture_sends_a_full_batch_at_once() -> None:
    async def scenario() -> list[int]:
        sink = Sink()
        capture = Capture(sink, StdoutMetricParser([]), None, BatchLimits(interval_s=30.0, max_lines=500))
        capture.start()
        reader = asyncio.StreamReader()
        capture.attach(reader, None)
        reader.feed_data(b"".join(b"line %d\n" % i for i in range(1200)))
        while sum(len(t) for _, t in sink.batches) < 1000:
            await asyncio.sleep(0.005)
        sizes = [len(t) for _, t in sink.batches]
        reader.feed_eof()
        await capture.drain()
        await capture.close()
        return sizes + [len(t) for _, t in sink.batches[len(sizes) :]]

    sizes = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert sizes == [500, 500, 200]


def test_take_respects_the_point_byte_limit() -> None:
    point = MetricPoint(name="m" * 50, step=1, value=0.5, source="stdout")
    size = point.ByteSize() + 3
    batch = PendingBatch(BatchLimits(max_points=100, max_point_bytes=3 * size + 1))
    batch.add_points([point] * 10, now=0)
    assert batch.full
    assert [len(batch.take(0)[1]) for _ in range(4)] == [3, 3, 3, 1]
    assert batch.empty


def test_capture_reads_tensorboard_scalars_while_running_and_what_is_left_at_the_end(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    (tmp_path / "broken").mkdir()
    # A length whose checksum is wrong, still wrong on the next look: a corrupt file, reported once.
    (tmp_path / "broken" / "events.out.tfevents.1.host").write_bytes(b"\xff" * 20)

    async def scenario() -> Sink:
        sink = Sink()
        capture = Capture(
            sink,
            StdoutMetricParser([]),
            None,
            BatchLimits(interval_s=0.01),
            tail_interval_s=0.02,
            tensorboard_dir=tmp_path,
        )
        capture.start()
        capture.attach(None, None)
        writer = SummaryWriter(str(tmp_path / "tb"))
        writer.add_scalar("loss", 0.5, 1)
        writer.flush()

        def seen(kind: str, needle: str) -> bool:
            return any(k == kind and any(needle in t for t in texts) for k, texts in sink.batches)

        deadline = asyncio.get_running_loop().time() + 10
        while not (seen("metrics", "loss@1") and seen("logged", "TensorBoard metrics:")):
            assert asyncio.get_running_loop().time() < deadline, sink.batches
            await asyncio.sleep(0.01)
        writer.add_scalar("loss", 0.25, 2)
        writer.close()  # the script exits: what it wrote last is read by drain
        await capture.drain()
        await capture.close()
        return sink

    sink = asyncio.run(scenario())
    metrics = [t for kind, texts in sink.batches if kind == "metrics" for t in texts]
    problems = [t for kind, texts in sink.batches if kind == "logged" for t in texts if "TensorBoard" in t]
    assert metrics == ["tensorboard:loss@1=0.5", "tensorboard:loss@2=0.25"]
    assert len(problems) == 1 and "broken/events.out.tfevents.1.host" in problems[0]
    assert problems[0].startswith("AGENT:")


class SlowSink(Sink):
    """Stores a batch only when let: the flush loop is caught in the middle of a send."""

    def __init__(self) -> None:
        super().__init__()
        self.sending = asyncio.Event()
        self.release = asyncio.Event()

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
        self.sending.set()
        await self.release.wait()
        await super().logged(lines)


def test_close_during_a_send_loses_nothing_the_flush_loop_took() -> None:
    async def scenario() -> list[str]:
        sink = SlowSink()
        capture = Capture(sink, StdoutMetricParser([]), None, BatchLimits(interval_s=0.01))
        capture.start()
        capture.agent_line("taken by the loop")
        await asyncio.wait_for(sink.sending.wait(), 5)
        capture.agent_line("still pending")
        closing = asyncio.create_task(capture.close())
        for _ in range(20):  # let close() run up to where it waits for the send in flight
            await asyncio.sleep(0)
        sink.release.set()
        await asyncio.wait_for(closing, 5)
        return [t for _, texts in sink.batches for t in texts]

    assert asyncio.run(scenario()) == ["AGENT:taken by the loop", "AGENT:still pending"]


def test_output_with_nul_or_invalid_utf8_is_captured_as_storable_text() -> None:
    async def scenario() -> tuple[Sink, Capture]:
        sink = Sink()
        capture = Capture(sink, StdoutMetricParser([]), None, BatchLimits(interval_s=10.0))
        capture.start()
        capture.agent_line("agent says \x00")
        capture.attach(feed(b"ok\nhalf \xff\xfe\n"), feed(b"boom\x00x\n"))
        await capture.drain()
        await capture.close()
        return sink, capture

    sink, capture = asyncio.run(scenario())
    logged = [t for kind, texts in sink.batches if kind == "logged" for t in texts]
    assert sorted(logged) == sorted(
        ["AGENT:agent says \ufffd", "STDOUT:ok", "STDOUT:half \ufffd\ufffd", "STDERR:boom\ufffdx"]
    )
    assert capture.last_stderr == "boom\ufffdx"  # quoted in the failure message
