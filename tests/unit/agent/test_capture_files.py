"""Capture of output files (Capture.attach_files): tailing, line cutting, safety, truncation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from runyard.agent.capture import MAX_LINE_BYTES, BatchLimits, Capture
from runyard.agent.metrics import StdoutMetricParser, compile_patterns
from runyard.v1.common_pb2 import LogLine, LogStream, MetricPoint

DEADLINE_S = 10.0


class Sink:
    """A pure test double of ReportSink: keeps every batch with the event id it came with."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.points: list[MetricPoint] = []
        self.ids: list[str] = []

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
        self.lines.extend(lines)
        self.ids.append(event_id)

    async def metrics(self, points: Sequence[MetricPoint], event_id: str = "") -> None:
        self.points.extend(points)
        self.ids.append(event_id)

    def texts(self, stream: LogStream.ValueType) -> list[str]:
        return [x.text for x in self.lines if x.stream == stream]


STDOUT, STDERR, AGENT = LogStream.LOG_STREAM_STDOUT, LogStream.LOG_STREAM_STDERR, LogStream.LOG_STREAM_AGENT


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def capture_for(sink: Sink, patterns: Sequence[str] = (), **kw: float) -> Capture:
    parser = StdoutMetricParser(compile_patterns(patterns)[0])
    return Capture(sink, parser, None, BatchLimits(interval_s=0.02), tail_interval_s=0.02, **kw)  # type: ignore[arg-type]


def test_files_are_tailed_while_the_command_runs_and_read_to_the_end_on_drain(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"

    async def scenario() -> None:
        sink = Sink()
        capture = capture_for(sink, [r"loss=(?P<loss>[0-9.]+)"])
        capture.start()
        capture.attach_files(out, err)  # the shim has not created them yet
        append(out, b"first\r\nloss=0.5\n")
        append(err, b"warn 1\n")
        await until(lambda: sink.texts(STDOUT) == ["first", "loss=0.5"], "the first lines while running")
        assert sink.texts(STDERR) == ["warn 1"]
        assert [(p.name, p.step, p.value) for p in sink.points] == [("loss", 0, 0.5)]
        append(out, b"y" * (MAX_LINE_BYTES + 10) + b"\nloss=0.25\nno newline at end")
        append(err, b"Traceback: boom\n")
        await capture.drain()  # right after the last write: nothing is left behind
        await capture.close()
        stdout = sink.texts(STDOUT)
        assert [len(t) for t in stdout[2:4]] == [MAX_LINE_BYTES, 10]  # an over-long line is split
        assert stdout[4:] == ["loss=0.25", "no newline at end"]
        assert sink.texts(STDERR) == ["warn 1", "Traceback: boom"]
        assert capture.last_stderr == "Traceback: boom"
        assert [(p.name, p.step, p.value) for p in sink.points] == [("loss", 0, 0.5), ("loss", 1, 0.25)]

    run(scenario)


def test_a_symbolic_link_or_fifo_planted_for_an_output_file_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "agent-keys"
    secret.write_text("SECRET-KEY\n")
    out_dir = tmp_path / "output"
    out_dir.mkdir()
    (out_dir / "stdout").symlink_to(secret)
    os.mkfifo(out_dir / "stderr")  # opened for reading, a FIFO would block until someone writes

    async def scenario() -> None:
        sink = Sink()
        capture = capture_for(sink)
        capture.start()
        capture.attach_files(out_dir / "stdout", out_dir / "stderr")
        await capture.drain()
        await capture.close()
        assert not sink.texts(STDOUT) and not sink.texts(STDERR)
        notes = sink.texts(AGENT)
        assert any("stdout is not followed" in n and "symbolic link" in n for n in notes), notes
        assert any("stderr is not followed" in n and "FIFO" in n for n in notes), notes
        assert not any("SECRET" in x.text for x in sink.lines)

    run(scenario)


def test_a_linked_output_folder_is_refused(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "stdout").write_text("host file\n")
    (tmp_path / "output").symlink_to(host)

    async def scenario() -> None:
        sink = Sink()
        capture = capture_for(sink)
        capture.start()
        capture.attach_files(tmp_path / "output" / "stdout", tmp_path / "output" / "stderr")
        await capture.drain()
        await capture.close()
        assert not sink.texts(STDOUT)
        assert any("not a plain folder" in n for n in sink.texts(AGENT))

    run(scenario)


def test_a_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"

    async def scenario() -> None:
        sink = Sink()
        capture = capture_for(sink)
        capture.start()
        capture.attach_files(out, err)
        append(out, b"one\ntwo\nthree\n")
        await until(lambda: len(sink.texts(STDOUT)) == 3, "the first lines")
        out.write_bytes(b"new\n")  # the run truncates its own output
        await until(lambda: "new" in sink.texts(STDOUT), "the line after the truncation")
        append(out, b"more\n")
        await capture.drain()
        await capture.close()
        assert sink.texts(STDOUT) == ["one", "two", "three", "new", "more"]
        assert any("truncated" in n for n in sink.texts(AGENT))

    run(scenario)


def test_a_slow_sink_holds_back_reading_instead_of_dropping_lines(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    out.write_bytes(b"".join(b"line %d\n" % i for i in range(20_000)))

    class Slow(Sink):
        async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None:
            await asyncio.sleep(0.01)
            await super().logged(lines, event_id)

    async def scenario() -> None:
        sink = Slow()
        limits = BatchLimits(interval_s=0.01, max_lines=500, max_pending_lines=1000)
        capture = Capture(sink, StdoutMetricParser([]), None, limits, tail_interval_s=0.01)
        capture.start()
        capture.attach_files(out, err)
        await capture.drain()
        await capture.close()
        assert sink.texts(STDOUT) == [f"line {i}" for i in range(20_000)]
        assert not sink.texts(AGENT)  # nothing dropped

    run(scenario)


def test_a_planted_link_for_the_metrics_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"step": 1, "leaked": 1}\n')
    out_dir = tmp_path / "output"
    out_dir.mkdir()
    (out_dir / "metrics.jsonl").symlink_to(secret)

    async def scenario() -> None:
        sink = Sink()
        capture = Capture(sink, StdoutMetricParser([]), out_dir / "metrics.jsonl", BatchLimits(interval_s=0.02))
        capture.start()
        capture.attach_files(out_dir / "stdout", out_dir / "stderr")
        await capture.drain()
        await capture.close()
        assert not sink.points
        assert any("metrics file not read" in n and "symbolic link" in n for n in sink.texts(AGENT))

    run(scenario)
