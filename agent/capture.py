"""Capture of one attempt's output: log lines and metric points, sent in batches.

Lines are cut from the raw pipes (not ``readline``) so that a process printing
a megabyte without a newline cannot stall or crash the agent: a line longer
than `MAX_LINE_BYTES` is split. A quiet run's batch goes out `BatchLimits.interval_s`
after its first line (at most one message every `BatchLimits.min_gap_s`), a
chatty run's after `BatchLimits.busy_interval_s` or when full (lines, bytes or
points), so a quiet run's print shows up within tens of milliseconds and a
chatty run ships few large messages. While a batch is full the readers read
no further: a run printing faster than the agent can send waits in its own
pipe, and the agent's lag from read to send stays about one message. Only a
sink that takes nothing for `BatchLimits.stall_s` lets a pipe's reader go on;
then at most `BatchLimits.max_pending_lines` lines wait, the rest are counted
and the count is reported as an agent line instead of growing the agent's
memory without bound.

The RUNYARD_METRICS_FILE written by ``runyard.log`` and the TensorBoard event
files under RESULT_DIR (`TensorBoardTail`) are polled every ``tail_interval_s``:
the standard library has no file-change wakeup, and a tenth of a second is well
under the batching interval anyway. The reading and parsing happen in a worker
thread (`asyncio.to_thread`), so a run writing tens of thousands of points a
second never stalls the pipes or the sending; the points are handed to the
batch back on the event loop. Each poll finishes before the next starts, and
`drain` waits for the one in flight, so the file offsets have one owner at a
time. Problems the TensorBoard reader meets (a corrupt record) become agent
lines in the run's log.

Whatever a run prints becomes storable text here, where it is captured
(`runyard.storable`): invalid UTF-8 bytes and NUL become U+FFFD, the rest is
kept as printed. Metric names from the JSON lines and TensorBoard tags follow
the same rule, and so do failure messages that quote stderr.

Output files (`Capture.attach_files`, the container runtime): the command's
stdout and stderr are files its init shim appends to, not pipes; they are
tailed by offset with the same line cutter (`runyard.agent.output_files`), and
opened so that a link or FIFO the run planted is never followed. A file keeps
what is not read yet, so a file reader waits when the batch is full instead of
dropping lines. The files outlive the agent process: with an `OffsetLedger`
every batch is recorded (its counts and content) before it is sent, and a
restarted agent resumes from the record (`OutputOffsets`) with no line lost or
repeated.

High volume: pipe output is cut into LogLines and metric points on one
capture thread, not on the event loop, so eight runs printing as fast as they
can still leave the loop free to send and take acks; and a chatty run's batches
wait `BatchLimits.busy_interval_s` and carry up to `BatchLimits.max_points`
points, so a run reporting 200,000 points makes ~40 metric events, not
thousands, and the control plane appends and projects each in one go.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Protocol

import structlog

from runyard.agent.metrics import SOURCE_JSONL, SOURCE_STDOUT, JsonlMetricParser, JsonlSplitter, StdoutMetricParser
from runyard.agent.output_files import MAX_LINE_BYTES, FileTail, LineCutter, UnsafeOutputFile, read_run_file
from runyard.agent.tensorboard import SOURCE_TENSORBOARD, TensorBoardTail
from runyard.storable import storable, storable_bytes
from runyard.v1.common_pb2 import LogLine, LogStream, MetricPoint

__all__ = ["MAX_LINE_BYTES", "BatchLimits", "Capture", "OutputOffsets", "PendingBatch", "PendingReport", "ReportSink"]

_READ_CHUNK = 64 * 1024
# What a line adds to a batch beyond its text (stream, time, framing), for the byte limit.
_LINE_OVERHEAD = 16
# Looked up once: attribute access on a protobuf enum wrapper is slow in a hot loop.
_STDOUT = LogStream.LOG_STREAM_STDOUT
_STDERR = LogStream.LOG_STREAM_STDERR
# A batch this small is recorded on the event loop (tens of microseconds); a bigger one on the capture thread.
_SAVE_ON_LOOP_ITEMS = 500
# A read of this many lines or fewer (a quiet run's) is cut on the event loop: tens of microseconds,
# and it does not queue behind chatty runs' 64 KiB reads on the capture thread.
_CUT_ON_LOOP_LINES = 32
# Once drain gave up on a pipe's end, a read that brings nothing within this long is its end.
_GIVEN_UP_READ_S = 0.05
# Keys of what a resumed capture passes over, beside the point sources (SOURCE_*).
_STDOUT_LINES, _STDERR_LINES = "stdout lines", "stderr lines"

log = structlog.get_logger("runyard.agent.capture")


class ReportSink(Protocol):
    """Where batches go (the attempt's reporter); each call returns once the batch is stored.

    `event_id` names the report (its Nats-Msg-Id and the stored event's id); empty: a fresh one.
    A batch sent again with the same id is stored once.
    """

    async def logged(self, lines: Sequence[LogLine], event_id: str = "") -> None: ...

    async def metrics(self, points: Sequence[MetricPoint], event_id: str = "") -> None: ...


@dataclass(frozen=True)
class PendingReport:
    """One report of output that was being sent: resent as it was, with the same id, after a restart."""

    event_id: str
    lines: tuple[LogLine, ...] = ()
    points: tuple[MetricPoint, ...] = ()


@dataclass(frozen=True)
class OutputOffsets:
    """How far a capture of output files got: where a restarted agent's capture resumes.

    Counted in lines and points per source, not in bytes: the stdout patterns and
    runyard.log lines without a step number their points per metric, so a
    resumed capture reads the files again from their start (cutting is
    deterministic, see `LineCutter`), passes what these counts say was already
    sent, and goes on with the step counters exactly where they were. The cost
    is reading the files again once per restart (not per batch). `pending`
    is the batch that was on its way when the counts were saved (already
    counted): it is sent again first, with its own event ids, so whether or not
    it reached the control plane it is stored exactly once.
    """

    stdout_lines: int = 0
    stderr_lines: int = 0
    stdout_points: int = 0
    jsonl_points: int = 0
    #: Per TensorBoard event file (its path under RESULT_DIR), sorted: files are read in turns whose
    #: interleaving depends on timing, so one total would not say which file's points were sent.
    tensorboard: tuple[tuple[str, int], ...] = ()
    pending: tuple[PendingReport, ...] = ()

    def after(
        self, lines: Sequence[LogLine], points: Sequence[MetricPoint], tensorboard: Mapping[str, int] | None = None
    ) -> OutputOffsets:
        """These counts advanced by a batch (agent lines are not counted: they are not in any file);
        `tensorboard`: the batch's TensorBoard points per file."""
        out = err = 0
        for line in lines:
            if line.stream == _STDOUT:
                out += 1
            elif line.stream == _STDERR:
                err += 1
        by_source = {SOURCE_STDOUT: 0, SOURCE_JSONL: 0}
        for p in points:
            if p.source in by_source:
                by_source[p.source] += 1
        files = dict(self.tensorboard)
        for rel, n in (tensorboard or {}).items():
            files[rel] = files.get(rel, 0) + n
        return OutputOffsets(
            self.stdout_lines + out,
            self.stderr_lines + err,
            self.stdout_points + by_source[SOURCE_STDOUT],
            self.jsonl_points + by_source[SOURCE_JSONL],
            tuple(sorted(files.items())),
        )


class OffsetLedger(Protocol):
    """Where a capture of output files keeps its `OutputOffsets` (one small write per batch)."""

    def save(self, offsets: OutputOffsets) -> None: ...


@dataclass(frozen=True)
class BatchLimits:
    """When a batch goes out, and how big one may be.

    A quiet run's output goes out `interval_s` after it was read, and at most
    one message every `min_gap_s`: a print shows up in a watcher within tens
    of milliseconds, and a run printing a line every few milliseconds still
    makes no more than ~25 messages a second. A chatty run (its last batch
    held `busy_items` lines or points or more: over ~1,000 a second) waits
    `busy_interval_s` instead, or until a batch is full: up to 5,000 lines or
    points per message. The control plane stores each message in one
    transaction and projects it in one COPY, so its cost is mostly per message
    (a few ms), hardly per point: eight runs printing 10,000 metric lines a
    second each make ~30 messages a second, not ~160. The byte limits keep a
    message well under NATS's default 1 MiB max_payload, with room for the
    envelope.

    While a batch is full, a pipe's reader reads no further (see
    `Capture._wait_for_room`): a run printing faster than its output can be
    sent is held back in its own pipe, and what the agent has read is sent
    within about `busy_interval_s` plus one send. Only a sink that takes
    nothing for `stall_s` lets the reader go on, and then lines beyond
    `max_pending_lines` are counted, not kept.
    """

    interval_s: float = 0.01
    min_gap_s: float = 0.04
    busy_interval_s: float = 0.5
    busy_items: int = 50
    max_lines: int = 5000
    max_bytes: int = 256 * 1024
    max_points: int = 5000
    max_point_bytes: int = 256 * 1024
    max_pending_lines: int = 100_000
    stall_s: float = 2.0


class PendingBatch:
    """Lines and points waiting to be sent; decides when a batch is due (pure, clock passed in)."""

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self._lines: list[LogLine] = []
        self._line_bytes: list[int] = []
        self._bytes = 0
        self._points: list[MetricPoint] = []
        self._point_bytes: list[int] = []
        self._points_bytes = 0
        self._since: float | None = None
        self._taken_at: float | None = None
        self._busy = False
        self.dropped = 0

    @property
    def empty(self) -> bool:
        return not self._lines and not self._points and not self.dropped

    @property
    def pending_lines(self) -> int:
        return len(self._lines)

    @property
    def full(self) -> bool:
        lim = self.limits
        return (
            len(self._lines) >= lim.max_lines
            or self._bytes >= lim.max_bytes
            or len(self._points) >= lim.max_points
            or self._points_bytes >= lim.max_point_bytes
        )

    def add_line(self, line: LogLine, now: float) -> None:
        self.add_lines([line], [len(line.text.encode("utf-8")) + _LINE_OVERHEAD], now)

    def add_lines(self, lines: Sequence[LogLine], sizes: Sequence[int], now: float, bounded: bool = True) -> None:
        """Lines with their bytes in a batch; those beyond `max_pending_lines` are only counted.

        `bounded` false: all are kept (a file's reader holds back instead, so it overshoots by one read at most).
        """
        if not lines:
            return
        room = max(0, self.limits.max_pending_lines - len(self._lines))
        if bounded and room < len(lines):
            self.dropped += len(lines) - room
            lines, sizes = lines[:room], sizes[:room]
        self._lines.extend(lines)
        self._line_bytes.extend(sizes)
        self._bytes += sum(sizes)
        self._mark(now)

    def add_points(self, points: Sequence[MetricPoint], now: float, sizes: Sequence[int] | None = None) -> None:
        """`sizes`: each point's bytes in a batch when the caller measured them already."""
        if points:
            if sizes is None:
                # Serialized size plus the tag and length that frame it in the message.
                sizes = [p.ByteSize() + 3 for p in points]
            self._points.extend(points)
            self._point_bytes.extend(sizes)
            self._points_bytes += sum(sizes)
            self._mark(now)

    def _mark(self, now: float) -> None:
        if self._since is None:
            self._since = now

    def seconds_until_due(self, now: float) -> float | None:
        """None when there is nothing to send; 0 when a batch should go now."""
        if self.empty or self._since is None:
            return None
        if self.full:
            return 0.0
        if self._busy:
            due = self._since + self.limits.busy_interval_s
        else:
            due = self._since + self.limits.interval_s
            if self._taken_at is not None:
                due = max(due, self._taken_at + self.limits.min_gap_s)
        return max(0.0, due - now)

    def take(self, time_us: int, now: float | None = None) -> tuple[list[LogLine], list[MetricPoint]]:
        """One message worth of lines and points (within the limits); call again until empty.

        `now` (the clock of `seconds_until_due`): when the message goes, for `BatchLimits.min_gap_s`.
        """
        lim = self.limits
        n, size = _fit(self._line_bytes, lim.max_lines, lim.max_bytes)
        lines, self._lines = self._lines[:n], self._lines[n:]
        self._line_bytes = self._line_bytes[n:]
        self._bytes -= size
        if self.dropped:
            lines.append(
                LogLine(
                    stream=LogStream.LOG_STREAM_AGENT,
                    text=f"{self.dropped} log lines dropped: the agent could not send them fast enough",
                    time_us=time_us,
                )
            )
            self.dropped = 0
        n, size = _fit(self._point_bytes, lim.max_points, lim.max_point_bytes)
        points, self._points = self._points[:n], self._points[n:]
        self._point_bytes = self._point_bytes[n:]
        self._points_bytes -= size
        self._since = None if self.empty else self._since
        self._busy = max(len(lines), len(points)) >= lim.busy_items
        if now is not None:
            self._taken_at = now
        return lines, points


def _fit(sizes: Sequence[int], max_count: int, max_bytes: int) -> tuple[int, int]:
    """How many of the first items fit in one message, and their bytes (at least one, however big)."""
    n = size = 0
    while n < len(sizes) and n < max_count and (n == 0 or size + sizes[n] <= max_bytes):
        size += sizes[n]
        n += 1
    return n, size


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class _Cut:
    """What one read of a pipe became, built on the capture thread."""

    lines: list[LogLine] = field(default_factory=list)
    line_sizes: list[int] = field(default_factory=list)
    points: list[MetricPoint] = field(default_factory=list)
    point_sizes: list[int] = field(default_factory=list)
    last_stderr: str = ""


_CAPTURE_THREAD: ThreadPoolExecutor | None = None


def _capture_thread() -> ThreadPoolExecutor:
    """One thread for every attempt's line parsing: Python holds one GIL, so more would not parse faster,
    and a thread of its own keeps parsing from queuing behind staging transfers in the default executor."""
    global _CAPTURE_THREAD
    if _CAPTURE_THREAD is None:
        _CAPTURE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runyard-capture")
    return _CAPTURE_THREAD


_TRANSCRIPT_PREFIX = {LogStream.LOG_STREAM_STDERR: "[stderr] ", LogStream.LOG_STREAM_AGENT: "[runyard] "}


class _Transcript:
    """The attempt's output as one text file: stdout lines as they are, stderr and agent lines marked.

    Lines before `open` (the attempt's folder is made while staging) wait in
    memory, a few at most. Best effort: a write error stops the transcript
    (logged once), never the capture.
    """

    _EARLY_LINES = 1000

    def __init__(self) -> None:
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._early: list[str] | None = []

    def open(self, path: Path) -> None:
        if self._early is None:
            return
        early, self._early = self._early, None
        self.path = path
        try:
            self._file = path.open("a", encoding="utf-8", errors="replace")
        except OSError as e:
            log.warning("output log not written", path=str(path), error=str(e))
            return
        self._put(early)

    def write(self, lines: Sequence[LogLine]) -> None:
        if not lines:
            return
        texts = [f"{_TRANSCRIPT_PREFIX.get(x.stream, '')}{x.text}\n" for x in lines]
        if self._early is not None:
            self._early.extend(texts[: max(0, self._EARLY_LINES - len(self._early))])
        elif self._file is not None:
            self._put(texts)

    def _put(self, texts: list[str]) -> None:
        assert self._file is not None
        try:
            self._file.write("".join(texts))
        except (OSError, ValueError) as e:
            log.warning("output log not written", path=str(self.path), error=str(e))
            self.close()

    def close(self) -> None:
        self._early = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class Capture:
    """Collects one attempt's lines and metrics and ships them through a ReportSink."""

    def __init__(
        self,
        sink: ReportSink,
        stdout_parser: StdoutMetricParser,
        metrics_file: Path | None,
        limits: BatchLimits | None = None,
        tail_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        *,
        tensorboard_dir: Path | None = None,
        ledger: OffsetLedger | None = None,
    ) -> None:
        self._sink = sink
        #: Every line this capture saw, appended as plain text (uploaded as the attempt's output.log).
        self._transcript = _Transcript()
        #: The highest metric step seen (a checkpoint's step); None before the first point.
        self.max_step: int | None = None
        self._stdout_parser = stdout_parser
        self._jsonl_parser = JsonlMetricParser()
        self._splitter = JsonlSplitter()
        self._metrics_file = metrics_file
        self._metrics_offset = 0
        self._tensorboard = TensorBoardTail(tensorboard_dir) if tensorboard_dir is not None else None
        self._batch = PendingBatch(limits or BatchLimits())
        self._tail_interval_s = tail_interval_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._readers: list[asyncio.Task[None]] = []
        self._tail: asyncio.Task[None] | None = None
        self._tail_stop = asyncio.Event()
        self._to_the_end = False  # the process exited: its pipes are read to their end, nothing holds back
        self._pipes_given_up = False  # drain's timeout passed: a pipe still open is not waited for
        self._pipe_reads: set[asyncio.Future[bytes]] = set()
        self.last_stderr = ""
        self.lines_seen = 0
        self.points_seen = 0
        # Following output files (attach_files): their tails, the end of reading (drain), what to pass over.
        self._followers: list[asyncio.Task[None]] = []
        self._files_final = asyncio.Event()
        self._room = asyncio.Event()  # set whenever a batch was taken: a held-back file reader reads on
        self._skip: dict[str, int] = {}
        self._ledger = ledger
        #: Counts of what was sent from the files (saved with each batch once files are followed with a ledger).
        self.offsets: OutputOffsets | None = None
        self._resend: list[PendingReport] = []
        self._tensorboard_runs: collections.deque[tuple[str, int]] = collections.deque()
        self._metrics_file_refused = False
        self._file_problems: list[str] = []

    # -- producers ----------------------------------------------------------

    def agent_line(self, text: str) -> None:
        """A line from the agent about the run (staging, exit status, upload); it may quote user output."""
        self._add_line(LogLine(stream=LogStream.LOG_STREAM_AGENT, text=storable(text), time_us=now_us()))

    def _add_line(self, line: LogLine) -> None:
        self._transcript.write((line,))
        self.lines_seen += 1
        self._batch.add_line(line, self._clock())
        self._signal()

    def _add_points(self, points: Sequence[MetricPoint]) -> None:
        if points:
            self._saw_steps(points)
            self.points_seen += len(points)
            self._batch.add_points(points, self._clock())
            self._signal()

    def _saw_steps(self, points: Sequence[MetricPoint]) -> None:
        if points:
            top = max(p.step for p in points)
            if self.max_step is None or top > self.max_step:
                self.max_step = top

    def write_transcript(self, path: Path) -> None:
        """From now on append every line to `path` (the lines seen so far first)."""
        self._transcript.open(path)

    def close_transcript(self) -> None:
        """Stop writing the output log (before it is uploaded)."""
        self._transcript.close()

    def _signal(self) -> None:
        self._wake.set()
        if self._batch.full:
            self._full.set()

    def _cut(self, raws: Sequence[bytes], stream: LogStream.ValueType, t: int) -> _Cut:
        """Lines cut from one read of a pipe (each at most MAX_LINE_BYTES), all with arrival time `t`.

        The agent's hot path when a run prints tens of thousands of metric lines a
        second: it runs on the capture thread (see `_on_lines`), and the per-line
        work is kept to the decode, the LogLine and the pattern match. Only the
        stdout reader of this capture calls it, one chunk at a time, so the
        parser's step counters see lines in order.
        """
        cut = _Cut()
        stdout = stream == _STDOUT
        parse = self._stdout_parser.parse
        for raw in raws:
            try:
                text = raw.decode("utf-8")
                size = len(raw) + _LINE_OVERHEAD
                stored_as_is = "\x00" not in text
            except UnicodeDecodeError:
                stored_as_is = False
            if not stored_as_is:  # invalid UTF-8 or NUL: U+FFFD in their place (runyard.storable)
                text = storable_bytes(raw)
                size = len(text.encode("utf-8")) + _LINE_OVERHEAD
            if text.endswith("\r"):
                text = text.rstrip("\r")
            cut.lines.append(LogLine(stream=stream, text=text, time_us=t))
            cut.line_sizes.append(size)
            if stdout:
                cut.points.extend(parse(text, t))
            elif text.strip():
                cut.last_stderr = text.strip()
        cut.point_sizes = [p.ByteSize() + 3 for p in cut.points]
        return cut

    async def _on_lines(self, raws: Sequence[bytes], stream: LogStream.ValueType, bounded: bool = True) -> None:
        """Turn the lines into LogLines and points off the event loop, then add them to the batch.

        A chatty run's lines take milliseconds of Python per chunk; done on the
        event loop, with eight such runs, every publish would wait its turn
        behind all of them, and sends would fall behind reads. On the capture
        thread the loop gets the GIL back within the switch interval.
        """
        t = now_us()
        if len(raws) <= _CUT_ON_LOOP_LINES:
            cut = self._cut(raws, stream, t)
        else:
            cut = await asyncio.get_running_loop().run_in_executor(_capture_thread(), self._cut, raws, stream, t)
        if self._skip:  # a resumed capture: pass over what the previous agent process sent
            self._pass_over(cut, stream)
        now = self._clock()
        self._batch.add_lines(cut.lines, cut.line_sizes, now, bounded)
        self._batch.add_points(cut.points, now, cut.point_sizes)
        if cut.last_stderr:
            self.last_stderr = cut.last_stderr
        self._transcript.write(cut.lines)
        self._saw_steps(cut.points)
        self.lines_seen += len(cut.lines)
        self.points_seen += len(cut.points)
        self._signal()

    def _pass_over(self, cut: _Cut, stream: LogStream.ValueType) -> None:
        """Drop the lines and points at the front of `cut` that a previous capture sent already."""
        key = _STDOUT_LINES if stream == _STDOUT else _STDERR_LINES
        if n := min(self._skip.get(key, 0), len(cut.lines)):
            del cut.lines[:n], cut.line_sizes[:n]
            self._skip[key] -= n
        if stream == _STDOUT and (n := min(self._skip.get(SOURCE_STDOUT, 0), len(cut.points))):
            del cut.points[:n], cut.point_sizes[:n]
            self._skip[SOURCE_STDOUT] -= n

    def _skip_points(self, points: list[MetricPoint]) -> list[MetricPoint]:
        """File points a previous capture sent already, left out (jsonl and TensorBoard, counted per source)."""
        if not self._skip or not points:
            return points
        kept = []
        for p in points:
            if self._skip.get(p.source, 0) > 0:
                self._skip[p.source] -= 1
            else:
                kept.append(p)
        return kept

    async def _read(self, reader: asyncio.StreamReader, stream: LogStream.ValueType) -> None:
        cutter = LineCutter()
        while True:
            await self._wait_for_room()
            if not (chunk := await self._next_chunk(reader)):
                break
            if lines := cutter.feed(chunk):
                await self._on_lines(lines, stream)
        if rest := cutter.finish():
            await self._on_lines(rest, stream)

    async def _next_chunk(self, reader: asyncio.StreamReader) -> bytes:
        """The pipe's next bytes; b"" at its end, or once `drain` gave up waiting for its end.

        Only the wait for bytes is cancelled then, never a read that returned:
        StreamReader.read takes nothing from its buffer until it returns.
        """
        if self._pipes_given_up:  # what is still buffered comes at once; more may never come
            try:
                return await asyncio.wait_for(reader.read(_READ_CHUNK), timeout=_GIVEN_UP_READ_S)
            except TimeoutError:
                return b""
        read = asyncio.ensure_future(reader.read(_READ_CHUNK))
        self._pipe_reads.add(read)
        try:
            return await read
        except asyncio.CancelledError:
            if read.cancelled() and self._pipes_given_up:
                return b""
            raise
        finally:
            self._pipe_reads.discard(read)

    async def _wait_for_room(self) -> None:
        """While a whole message waits to be sent, read no further (at most `BatchLimits.stall_s`).

        Reading on would only move the backlog from the run's pipe into the
        agent's memory and make every line wait longer between its read and its
        send; held back here, a run printing faster than its output can be sent
        blocks in its own prints, as it would writing to a slow terminal. A sink
        that takes nothing for `stall_s` (NATS away) must not stop the run: the
        reader goes on, and lines beyond `max_pending_lines` are counted, not kept.
        Once the process has exited (`drain`) nothing holds back: what is left is
        at most what its pipe held, and it must be read before drain's timeout.
        """
        waited = 0.0
        while self._batch.full and waited < self._batch.limits.stall_s and not (self._closing or self._to_the_end):
            self._room.clear()
            started = self._clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), timeout=self._batch.limits.stall_s - waited)
            waited += self._clock() - started

    async def _follow(self, tail: FileTail, stream: LogStream.ValueType) -> None:
        """Tail one output file until drain, then read it to the end it had when drain began."""
        loop = asyncio.get_running_loop()
        name = "stdout" if stream == _STDOUT else "stderr"
        end: int | None = None
        truncations = 0
        try:
            while True:
                # The file keeps what we have not read: wait for room rather than drop lines, and read
                # no further while a whole message waits (the lag from read to send stays one message).
                while self._batch.full or self._batch.pending_lines >= self._batch.limits.max_pending_lines:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), timeout=self._tail_interval_s)
                try:
                    if self._files_final.is_set() and end is None:
                        end = await loop.run_in_executor(_capture_thread(), tail.size)
                    lines, at_end = await loop.run_in_executor(_capture_thread(), tail.read, _READ_CHUNK)
                except UnsafeOutputFile as e:
                    self.agent_line(f"the run's {name} is not followed: {e}")
                    return
                if tail.truncations != truncations:
                    truncations = tail.truncations
                    self.agent_line(f"the run's {name} file was truncated; reading it again from its start")
                if lines:
                    await self._on_lines(lines, stream, bounded=False)
                if end is not None and (at_end or tail.offset >= end):
                    if rest := tail.cutter.finish():
                        await self._on_lines(rest, stream, bounded=False)
                    return
                if at_end:
                    await self._tail_pause()
        finally:
            tail.close()

    async def _tail_pause(self) -> None:
        """One tail interval, or less when drain begins."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._files_final.wait(), timeout=self._tail_interval_s)

    def _metrics_file_points(self) -> list[MetricPoint]:
        """The points of the JSON lines runyard.log appended since the last look (runs in a worker thread)."""
        if self._metrics_file is None:
            return []
        if self._metrics_file_refused:
            return []
        try:
            # The run can write the file's folder: never follow a link it planted there (output_files).
            data, size = read_run_file(self._metrics_file, self._metrics_offset)
            if size < self._metrics_offset:  # truncated or replaced: start over
                self._metrics_offset = 0
                self._splitter = JsonlSplitter()
                data, size = read_run_file(self._metrics_file, 0)
        except UnsafeOutputFile as e:
            self._metrics_file_refused = True
            self._file_problems.append(f"metrics file not read: {e}")
            return []
        except FileNotFoundError:
            return []
        except OSError as e:
            log.warning("metrics file unreadable", path=str(self._metrics_file), error=str(e))
            return []
        self._metrics_offset += len(data)
        t = now_us()
        return [p for line in self._splitter.feed(data) for p in self._jsonl_parser.parse(line, t)]

    def _file_points(self, final: bool) -> list[MetricPoint]:
        """One look at both metrics files; `final` once the process is gone (everything, partial lines too)."""
        points = self._metrics_file_points()
        if final:
            t = now_us()
            points.extend(p for line in self._splitter.rest() for p in self._jsonl_parser.parse(line, t))
        if self._tensorboard is not None:
            points.extend(self._tensorboard.drain() if final else self._tensorboard.poll())
        return self._skip_points(points)

    async def _poll_files(self, final: bool = False) -> None:
        points = await asyncio.to_thread(self._file_points, final)
        self._add_points(points)
        if self._tensorboard is not None and self._tensorboard.read_counts:
            if self._ledger is not None and self.offsets is not None:
                # Which file the batch's TensorBoard points come from, in their order (see _send_recorded).
                self._tensorboard_runs.extend(self._tensorboard.read_counts)
            self._tensorboard.read_counts.clear()
        while self._file_problems:
            self.agent_line(self._file_problems.pop(0))
        if self._tensorboard is not None and self._tensorboard.problems:
            for text in self._tensorboard.problems:
                self.agent_line(f"TensorBoard metrics: {text}")
            self._tensorboard.problems.clear()

    async def _tail_metrics(self) -> None:
        while not self._tail_stop.is_set():
            await self._poll_files()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tail_stop.wait(), timeout=self._tail_interval_s)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start sending batches; agent lines may be added from now on."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="capture-flush")

    def attach(self, stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader | None) -> None:
        """Follow a freshly spawned process's pipes and metrics file."""
        self._to_the_end = False
        for reader, stream in ((stdout, LogStream.LOG_STREAM_STDOUT), (stderr, LogStream.LOG_STREAM_STDERR)):
            if reader is not None:
                self._readers.append(asyncio.create_task(self._read(reader, stream), name="capture-read"))
        if self._metrics_file is not None or self._tensorboard is not None:
            self._tail_stop.clear()
            self._tail = asyncio.create_task(self._tail_metrics(), name="capture-tail")

    def attach_files(self, stdout: Path, stderr: Path, offsets: OutputOffsets | None = None) -> None:
        """Follow the files a command's stdout and stderr are appended to (a container's init shim
        writes them), and the metrics files, until `drain`.

        The lines are cut, parsed and batched as from pipes. The files stay on
        disk when the agent stops, so a restarted agent calls this again with the
        `offsets` its ledger saved: what was sent already is passed over and the
        batch that was on its way is sent again first (see `OutputOffsets`).
        Each file is opened without following links and must be a regular file
        (`runyard.agent.output_files`); one that is not is reported in the log and
        not read.
        """
        start = offsets or OutputOffsets()
        self._skip = {
            _STDOUT_LINES: start.stdout_lines,
            _STDERR_LINES: start.stderr_lines,
            SOURCE_STDOUT: start.stdout_points,
            SOURCE_JSONL: start.jsonl_points,
        }
        self._skip = {k: n for k, n in self._skip.items() if n}
        self._resend = list(start.pending)
        self.offsets = replace(start, pending=())
        if self._tensorboard is not None:
            self._tensorboard.skip = dict(start.tensorboard)
        self._files_final.clear()
        for path, stream in ((stdout, _STDOUT), (stderr, _STDERR)):
            self._followers.append(asyncio.create_task(self._follow(FileTail(path), stream), name="capture-follow"))
        if self._metrics_file is not None or self._tensorboard is not None:
            self._tail_stop.clear()
            self._tail = asyncio.create_task(self._tail_metrics(), name="capture-tail")
        if self._resend:
            self._wake.set()
            self._full.set()

    async def drain(self, timeout_s: float = 2.0) -> None:
        """After the process exited: read the pipes to EOF, then the metrics files to their end.

        A grandchild that escaped the process group may hold a pipe open; the
        timeout keeps such a run from hanging the attempt forever: past it, the
        readers stop waiting for more bytes, but what they had read or what
        was buffered is still cut and sent (however long a loaded machine takes
        for it). Followed
        output files are read to the end they have now, however long that takes
        (a timeout of 0 stops them at once: the attempt is ending in error).
        """
        if self._followers:
            self._files_final.set()
            if timeout_s <= 0:
                for task in self._followers:
                    task.cancel()
            for task in self._followers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._followers = []
        if self._readers:
            self._to_the_end = True
            self._room.set()
            _done, pending = await asyncio.wait(self._readers, timeout=timeout_s)
            if timeout_s <= 0:
                for task in pending:
                    task.cancel()
            elif pending:
                # Past the timeout only a pipe held open by someone else is given up: a reader still cutting
                # what it read (a loaded machine, a busy capture thread) finishes, and what is left buffered
                # is read; cancelled there, those lines would be lost without a word.
                self._pipes_given_up = True
                for read in list(self._pipe_reads):
                    read.cancel()
            for task in self._readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._readers = []
        if self._tail is not None:
            # Let the poll in flight finish (it owns the offsets while it runs), then read the rest.
            self._tail_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail
            self._tail = None
        await self._poll_files(final=True)

    async def detach(self) -> None:
        """Stop following without reading to the end (the agent stops, the command goes on); send what was read.

        What was read but not sent is sent (and recorded) now; what was not read
        stays in the files for the next agent process, which resumes from the
        ledger. The metrics files get no final read: a partial line there is the
        next process's to read once it is whole.
        """
        for task in self._followers:
            task.cancel()
        for task in self._followers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._followers = []
        if self._tail is not None:
            self._tail_stop.set()  # the poll in flight finishes (complete lines only)
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail
            self._tail = None
        await self.close()

    async def flush(self) -> None:
        """Send everything pending now; returns once it is stored (or there was nothing)."""
        await self._send(everything=True)

    async def _send(self, everything: bool) -> None:
        """Send batches until nothing is left, or (`everything` false) until what is left is not due yet.

        While one batch is being stored more output arrives; sending that at once
        too would turn a chatty run's output into a stream of small messages.
        """
        async with self._flush_lock:
            self._wake.clear()
            self._full.clear()
            while self._resend:  # the batch a previous agent process was sending: first, as it was
                await self._send_report(self._resend[0])
                self._resend.pop(0)
            while not self._batch.empty:
                lines, points = self._batch.take(now_us(), self._clock())
                self._room.set()
                if self._ledger is not None and self.offsets is not None:
                    await self._send_recorded(lines, points)
                else:
                    if lines:
                        await self._sink.logged(lines)
                    if points:
                        await self._sink.metrics(points)
                if not everything and self._batch.seconds_until_due(self._clock()) != 0.0:
                    break
            if not self._batch.empty:
                self._wake.set()  # the loop works out when the rest is due

    async def _send_recorded(self, lines: list[LogLine], points: list[MetricPoint]) -> None:
        """Save the counts this batch reaches and the batch itself (ids and content), then send it.

        One write per batch, before it goes: an agent killed while sending finds
        the batch in its ledger and sends it again with the same ids. No fsync:
        the ledger must outlive the agent process, not the host (the runs do not
        outlive the host either).
        """
        assert self._ledger is not None and self.offsets is not None
        reports = []
        if lines:
            reports.append(PendingReport(str(uuid.uuid4()), lines=tuple(lines)))
        if points:
            reports.append(PendingReport(str(uuid.uuid4()), points=tuple(points)))
        counts = self.offsets.after(lines, points, self._tensorboard_files(points))
        record = replace(counts, pending=tuple(reports))
        if len(lines) + len(points) > _SAVE_ON_LOOP_ITEMS:  # milliseconds of copying: off the event loop
            await asyncio.get_running_loop().run_in_executor(_capture_thread(), self._ledger.save, record)
        else:
            self._ledger.save(record)
        self.offsets = counts
        for report in reports:
            await self._send_report(report)

    def _tensorboard_files(self, points: Sequence[MetricPoint]) -> dict[str, int]:
        """The taken points' TensorBoard points per file: batches take points in the order they were read."""
        left = sum(1 for p in points if p.source == SOURCE_TENSORBOARD)
        files: dict[str, int] = {}
        while left:
            rel, n = self._tensorboard_runs[0]
            taken = min(n, left)
            files[rel] = files.get(rel, 0) + taken
            left -= taken
            if taken == n:
                self._tensorboard_runs.popleft()
            else:
                self._tensorboard_runs[0] = (rel, n - taken)
        return files

    async def _send_report(self, report: PendingReport) -> None:
        if report.lines:
            await self._sink.logged(report.lines, event_id=report.event_id)
        if report.points:
            await self._sink.metrics(report.points, event_id=report.event_id)

    async def close(self) -> None:
        """Stop following and send the rest; call before reporting a terminal transition."""
        if self._readers or self._followers or self._tail is not None:
            await self.drain(timeout_s=0.0)
        if self._flusher is not None:
            # The loop is asked to stop, never cancelled: cancelled inside a send it would lose the
            # batch it took, and a cancel landing as wait_for() completes can be swallowed, leaving
            # the loop running and this close waiting on it for ever.
            self._closing = True
            self._wake.set()
            self._full.set()
            await self._flusher
            self._flusher = None
        await self.flush()

    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            if self._closing:
                return
            delay = 0.0 if self._resend else self._batch.seconds_until_due(self._clock())
            if delay is None:
                self._wake.clear()
                continue
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), timeout=delay)
                if self._closing:
                    return  # close() sends the rest
            try:
                await self._send(everything=False)
            except Exception as e:  # the sink only gives up when NATS is closed for good
                log.error("sending run output failed", error=str(e))
