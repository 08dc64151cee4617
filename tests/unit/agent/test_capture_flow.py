"""When batches go out, and how far the agent reads ahead of what it sent (issue 12: live metrics under load)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from runyard.agent.capture import BatchLimits, Capture, PendingBatch
from runyard.agent.metrics import StdoutMetricParser, compile_patterns
from runyard.v1.common_pb2 import LogLine, LogStream, MetricPoint

STDOUT = LogStream.LOG_STREAM_STDOUT


def line(text: str) -> LogLine:
    return LogLine(stream=STDOUT, text=text, time_us=0)


def close(seconds: float | None, expected: float) -> bool:
    return seconds is not None and abs(seconds - expected) < 1e-9


def test_a_quiet_runs_batch_goes_soon_but_at_most_once_per_gap() -> None:
    batch = PendingBatch(BatchLimits(interval_s=0.01, min_gap_s=0.04, max_lines=100))
    batch.add_line(line("first"), now=5.0)
    assert close(batch.seconds_until_due(5.0), 0.01)  # a first print waits a hundredth of a second, not a tenth
    assert len(batch.take(0, now=5.01)[0]) == 1
    batch.add_line(line("second"), now=5.02)
    assert close(batch.seconds_until_due(5.02), 0.03)  # 40 ms after the previous message, not 10 ms after its line
    batch.add_line(line("third"), now=5.03)
    assert batch.seconds_until_due(5.05) == 0.0
    assert [x.text for x in batch.take(0, now=5.05)[0]] == ["second", "third"]
    batch.add_line(line("later"), now=9.0)
    assert close(batch.seconds_until_due(9.0), 0.01)  # long after the last message: only the interval


def test_a_full_batch_is_due_at_once_whatever_the_gap() -> None:
    batch = PendingBatch(BatchLimits(interval_s=0.01, min_gap_s=10.0, max_lines=2))
    batch.add_line(line("a"), now=0.0)
    batch.take(0, now=0.0)
    batch.add_line(line("b"), now=0.001)
    batch.add_line(line("c"), now=0.001)
    assert batch.full and batch.seconds_until_due(0.001) == 0.0


class GatedSink:
    """Stores a batch only when let (one at a time): a control plane that takes its time."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.points: list[int] = []
        self.gate = asyncio.Semaphore(0)
        self.sends = 0

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
        await self.gate.acquire()
        self.sends += 1
        self.lines.extend(x.text for x in lines)

    async def metrics(self, points: Sequence[MetricPoint], event_id: str = "") -> None:
        self.points.extend(p.step for p in points)


def flood(n: int) -> bytes:
    return b"".join(b"step %d loss=0.5\n" % i for i in range(n))


async def until(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


def test_a_flooding_run_is_held_in_its_pipe_while_a_whole_message_waits() -> None:
    """The agent reads no further than one message (plus the read in hand) beyond what it sent: the lag from
    read to send stays bounded however fast the run prints, and nothing is dropped."""
    limits = BatchLimits(interval_s=0.001, busy_interval_s=0.001, max_lines=200, max_points=200, stall_s=60.0)
    total = 5000

    async def scenario() -> tuple[GatedSink, list[int]]:
        sink = GatedSink()
        parser = StdoutMetricParser(compile_patterns([r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+)"])[0])
        capture = Capture(sink, parser, None, limits)
        capture.start()
        reader = asyncio.StreamReader(limit=1 << 20)
        reader.feed_data(flood(total))  # the whole flood is there to read at once
        reader.feed_eof()
        capture.attach(reader, None)
        read_ahead = []
        for _ in range(10):  # ten sends, each let through only once the agent stopped reading
            await until(lambda: capture._batch.full)
            for _ in range(50):  # give a reader that would read on every chance to
                await asyncio.sleep(0)
            read_ahead.append(capture.lines_seen - len(sink.lines))
            sink.gate.release()
            await until(lambda: sink.sends == len(read_ahead))
        for _ in range(1000):
            sink.gate.release()
        await asyncio.wait_for(capture.drain(), 10)
        await asyncio.wait_for(capture.close(), 10)
        return sink, read_ahead

    sink, read_ahead = asyncio.run(scenario())
    assert sink.lines == [f"step {i} loss=0.5" for i in range(total)]  # all of it, in order, once
    assert sink.points == list(range(total))
    lines_per_read = 64 * 1024 // len(b"step 4999 loss=0.5\n") + 1
    # Without the hold-back the reader takes the whole flood while the first send waits (5,000 lines).
    assert max(read_ahead) <= 2 * limits.max_lines + lines_per_read, read_ahead


def test_what_an_exited_process_left_in_its_pipe_is_read_before_drains_timeout() -> None:
    """The hold-back ends when the process does: its last lines are read at once, not lost to drain's timeout."""
    limits = BatchLimits(interval_s=0.001, busy_interval_s=0.001, max_lines=100, max_points=100, stall_s=60.0)

    async def scenario() -> GatedSink:
        sink = GatedSink()
        capture = Capture(sink, StdoutMetricParser([]), None, limits)
        capture.start()
        reader = asyncio.StreamReader(limit=1 << 20)
        reader.feed_data(flood(20_000))
        reader.feed_eof()  # the process has exited; the control plane is slow to take its output
        capture.attach(reader, None)
        await until(lambda: capture._batch.full)
        await asyncio.wait_for(capture.drain(timeout_s=0.5), 10)
        assert capture.lines_seen == 20_000  # read to the end although nothing was sent yet
        for _ in range(10_000):
            sink.gate.release()
        await asyncio.wait_for(capture.close(), 10)
        return sink

    sink = asyncio.run(scenario())
    assert sink.lines == [f"step {i} loss=0.5" for i in range(20_000)]


def test_a_sink_that_takes_nothing_does_not_stop_the_run_for_longer_than_stall_s() -> None:
    """NATS away: the reader goes on after `stall_s`; beyond `max_pending_lines` lines are counted, not kept."""
    limits = BatchLimits(interval_s=0.001, max_lines=100, max_pending_lines=300, stall_s=0.05)

    async def scenario() -> tuple[GatedSink, Capture]:
        sink = GatedSink()
        capture = Capture(sink, StdoutMetricParser([]), None, limits)
        capture.start()
        reader = asyncio.StreamReader(limit=1 << 20)
        reader.feed_data(flood(3000))
        reader.feed_eof()
        capture.attach(reader, None)
        # The pipe is read to its end although nothing was sent: the run is not blocked for good.
        await asyncio.wait_for(capture.drain(timeout_s=10), 10)
        for _ in range(1000):
            sink.gate.release()
        await asyncio.wait_for(capture.close(), 10)
        return sink, capture

    sink, capture = asyncio.run(scenario())
    assert capture.lines_seen == 3000
    kept = [t for t in sink.lines if t.startswith("step ")]
    assert kept == [f"step {i} loss=0.5" for i in range(len(kept))]  # what was kept is the start, in order
    dropped = [t for t in sink.lines if "log lines dropped" in t]
    assert len(dropped) == 1 and int(dropped[0].split()[0]) == 3000 - len(kept)


def test_a_quiet_runs_lines_are_not_held_behind_a_flooding_run() -> None:
    """Two captures on one agent: a quiet run's line goes out while a flooding run's reads fill the capture thread."""
    limits = BatchLimits(interval_s=0.001, min_gap_s=0.001, busy_interval_s=0.5, max_lines=5000, stall_s=60.0)

    async def scenario() -> None:
        flood_sink, quiet_sink = GatedSink(), GatedSink()
        for _ in range(10_000):
            flood_sink.gate.release()
        quiet_sink.gate.release()
        parser = StdoutMetricParser(compile_patterns([r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+)"])[0])
        flooding = Capture(flood_sink, parser, None, limits)
        quiet = Capture(quiet_sink, StdoutMetricParser([]), None, limits)
        flooding.start()
        quiet.start()
        flood_reader, quiet_reader = asyncio.StreamReader(limit=1 << 22), asyncio.StreamReader()
        flood_reader.feed_data(flood(200_000))
        flooding.attach(flood_reader, None)
        quiet.attach(quiet_reader, None)
        await until(lambda: flooding.lines_seen > 0)
        quiet_reader.feed_data(b"hello\n")
        await until(lambda: quiet_sink.lines == ["hello"], timeout=5.0)
        # The flooding run's output is still being worked through: the quiet line did not wait for it.
        assert flooding.lines_seen < 200_000
        flood_reader.feed_eof()
        quiet_reader.feed_eof()
        for capture in (flooding, quiet):
            await capture.drain(timeout_s=0)
            await capture.close()

    asyncio.run(scenario())


def test_drains_timeout_gives_up_a_pipe_held_open_but_not_the_lines_already_there() -> None:
    """A grandchild keeps the pipe open (no EOF ever): drain ends after its timeout, and every line the run
    printed before is still sent, though cutting them takes longer than the timeout."""
    limits = BatchLimits(interval_s=0.001, busy_interval_s=0.001, stall_s=60.0)
    total = 100_000

    async def scenario() -> GatedSink:
        sink = GatedSink()
        for _ in range(100_000):
            sink.gate.release()
        parser = StdoutMetricParser(compile_patterns([r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+)"])[0])
        capture = Capture(sink, parser, None, limits)
        capture.start()
        reader = asyncio.StreamReader(limit=1 << 24)
        reader.feed_data(flood(total))  # and never EOF: someone else holds the pipe's write end
        capture.attach(reader, None)
        await asyncio.wait_for(capture.drain(timeout_s=0.01), 30)
        await asyncio.wait_for(capture.close(), 30)
        return sink

    sink = asyncio.run(scenario())
    assert sink.lines == [f"step {i} loss=0.5" for i in range(total)]
    assert sink.points == list(range(total))


class SecondReadNotRun(asyncio.StreamReader):
    """A reader whose second read has not run yet when drain gives up (a loaded loop: the read was scheduled, the
    timeout came first). That read waits until it is cancelled, taking nothing from the buffer; the reads after it
    run as a StreamReader's do."""

    def __init__(self) -> None:
        super().__init__(limit=1 << 24)
        self.reads = 0
        self.cancelled_reads = 0

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 2:  # the first 64 KiB were read and cut: their last line is still incomplete
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled_reads += 1
                raise
        return await super().read(n)


def test_a_read_drain_cancels_before_it_ran_does_not_end_the_pipe() -> None:
    """Drain's timeout cancels the wait for a held-open pipe; a read cancelled before it took any bytes is not the
    pipe's end: what is buffered is still read and sent, whole lines only (none cut at a 64 KiB read's edge)."""
    limits = BatchLimits(interval_s=0.001, busy_interval_s=0.001, stall_s=60.0)
    total = 10_000

    async def scenario() -> tuple[GatedSink, SecondReadNotRun]:
        sink = GatedSink()
        for _ in range(10_000):
            sink.gate.release()
        parser = StdoutMetricParser(compile_patterns([r"step (?P<step>\d+) loss=(?P<loss>[0-9.]+)"])[0])
        capture = Capture(sink, parser, None, limits)
        capture.start()
        reader = SecondReadNotRun()
        reader.feed_data(flood(total))  # never EOF: a grandchild holds the write end
        capture.attach(reader, None)
        await until(lambda: reader.reads == 2)  # the first read is cut, the second is waiting to run
        await asyncio.wait_for(capture.drain(timeout_s=0.01), 30)
        await asyncio.wait_for(capture.close(), 30)
        return sink, reader

    sink, reader = asyncio.run(scenario())
    assert reader.cancelled_reads == 1  # drain gave up on the pipe while that read was pending
    assert sink.lines == [f"step {i} loss=0.5" for i in range(total)]
    assert sink.points == list(range(total))
