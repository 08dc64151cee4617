"""Metric points from the TensorBoard event files a training script writes under RESULT_DIR.

The third zero-code metrics source (beside stdout patterns and ``runyard.log``
JSON lines): Keras' ``TensorBoard`` callback and ``torch.utils.tensorboard``
already write every scalar a user looks at, so the agent tails those files.

**Reading.** Event files are TFRecord files: per record a little-endian u64
length, the masked CRC-32C of those 8 bytes, the data (a serialized
``tensorboard.Event``), and the masked CRC-32C of the data. A writer appends
records while we read, so `TensorBoardTail` remembers, per file, the offset
just past the last complete record and reads only whole records from there;
a partial record at the end waits for the next poll. A CRC mismatch may be a
write in progress (some filesystems show the new size before the bytes), so
it is only believed when it is still there on the next poll: then a bad
record is skipped (its length is known) or, if the length itself is bad, the
rest of that file is given up, with a message in `problems` either way.

The message schemas come from the ``tensorboard`` package
(``tensorboard.compat.proto``, which imports cleanly with protobuf 7). Its
record loader (``event_file_loader``) is not used: it imports TensorFlow
whenever TensorFlow is installed in the same environment (seconds and
hundreds of MB in the agent), it hides the file offset we need for tailing,
and it was about four times slower here on 50,000 scalars (1.2 s against
0.3 s) because it passes every event through its compatibility migrations.

**Scalars.** A summary value is a scalar when it carries ``simple_value``
(the TF1 form; ``add_scalar`` by default) or a rank-0 numeric ``tensor``
(TF2's ``tf.summary.scalar`` as the Keras callback writes it, with the bytes
in ``tensor_content``; ``add_scalar(new_style=True)`` with ``float_val``)
whose plugin, named in the tag's first summary of the file, is ``scalars`` or
not named. Histograms, images, text and hparams are skipped. A float32 value
is widened to the shortest decimal that reads back as the same float32, so
``add_scalar("val_accuracy", 0.95, 3)`` gives 0.95, exactly what the same
script printing ``val_accuracy=0.95`` or calling ``runyard.log(step=3,
val_accuracy=0.95)`` gives, rather than 0.949999988079071. Doubles are exact.

**Names.** A point is named by its tag, whatever folder under RESULT_DIR the
file is in, so ``add_scalar("val_accuracy", ...)`` is the metric
``val_accuracy`` for the manifest's ``search.metric`` and for the other two
sources alike. Two layouts are recognised by the event file's folder:

* Keras' callback writes ``<log_dir>/train`` and ``<log_dir>/validation``
  with tags ``epoch_loss``, ``epoch_accuracy``, ... These become the names
  Keras itself uses in ``History`` and its progress bar: ``loss``,
  ``accuracy`` from train/, ``val_loss``, ``val_accuracy`` from validation/
  (``epoch_`` dropped; other tags kept, with ``val_`` before them in
  validation/).
* ``SummaryWriter.add_scalars("loss", {"train": a, "val": b})`` writes the
  tag ``loss`` into folders ``loss_train`` and ``loss_val``: these become
  ``loss/train`` and ``loss/val`` instead of two series under one name.

The step is the event's step (Keras: the epoch from 0), the time the event's
wall time.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
from tensorboard.compat.proto import event_pb2

from runyard.agent.output_files import UnsafeOutputFile, open_run_file
from runyard.storable import storable
from runyard.v1.common_pb2 import MetricPoint

SOURCE_TENSORBOARD = "tensorboard"

#: Bytes read from one file per poll, so a huge backlog (image summaries) never stalls a capture loop.
DEFAULT_POLL_BYTES = 4 * 1024 * 1024
_HEADER = 12  # u64 length + u32 masked crc of it
_FOOTER = 4  # u32 masked crc of the data

# DataType numbers of tensorboard/compat/proto/types.proto.
_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64, _DT_HALF, _DT_BFLOAT16 = 1, 2, 3, 9, 19, 14
_DT_INT16, _DT_INT8, _DT_UINT8, _DT_UINT16, _DT_UINT32, _DT_UINT64, _DT_BOOL = 5, 6, 4, 17, 22, 23, 10
#: struct formats of the numeric types whose bytes may come in tensor_content.
_CONTENT_FORMATS = {
    _DT_FLOAT: "<f",
    _DT_DOUBLE: "<d",
    _DT_HALF: "<e",
    _DT_INT32: "<i",
    _DT_INT64: "<q",
    _DT_INT16: "<h",
    _DT_INT8: "<b",
    _DT_UINT8: "<B",
    _DT_UINT16: "<H",
    _DT_UINT32: "<I",
    _DT_UINT64: "<Q",
    _DT_BOOL: "<?",
}


# -- TFRecord framing -----------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def python_crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) byte by byte: the fallback where google-crc32c's C build is missing (~12 MiB/s)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _native_crc32c() -> Callable[[bytes], int] | None:
    """google-crc32c's C (SSE4.2/ARMv8 CRC instructions) when installed and built: every event file byte is
    checked beside the training job, and the Python loop costs a core per ~12 MiB/s. Its own pure-Python
    fallback is no faster than ours, so only the C build counts."""
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "") != "c":
        return None
    value: Callable[[bytes], int] = google_crc32c.value
    return value


#: CRC-32C, the checksum TFRecord uses (zlib only has the other CRC-32).
crc32c: Callable[[bytes], int] = _native_crc32c() or python_crc32c


_LENGTH_AND_CRC = struct.Struct("<QI")
_CRC = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotated and offset, so a CRC over data holding CRCs stays strong."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass(frozen=True)
class Framing:
    """Whole records found in a buffer, how many bytes they took, and what stopped the reading."""

    records: list[bytes]
    consumed: int
    #: None: the buffer ended (possibly inside a record). "header"/"data": a CRC did not match at `consumed`.
    bad: str | None = None
    #: Length of the record at `consumed` when its header was readable (lets a bad data CRC be skipped).
    next_length: int | None = None


def split_records(buffer: bytes, verify: bool = True) -> Framing:
    """Cut a buffer that starts on a record boundary into complete records.

    The agent's hot loop over every record a run writes (a scalar event is ~50 bytes): one struct
    call for the header and the masking inlined, ~1.7x the straightforward loop in bench/tensorboard_crc.py.
    """
    records: list[bytes] = []
    pos = 0
    end = len(buffer)
    head = _LENGTH_AND_CRC.unpack_from
    foot = _CRC.unpack_from
    checksum = crc32c  # the module's, read once per call (a test or the bench may swap it)
    while end - pos >= _HEADER:
        length, header_crc = head(buffer, pos)
        if verify:
            crc = checksum(buffer[pos : pos + 8])
            if (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF != header_crc:
                return Framing(records, pos, "header")
        start = pos + _HEADER
        stop = start + length
        if end < stop + _FOOTER:
            return Framing(records, pos, None, length)
        data = buffer[start:stop]
        if verify:
            crc = checksum(data)
            if (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF != foot(buffer, stop)[0]:
                return Framing(records, pos, "data", length)
        records.append(data)
        pos = stop + _FOOTER
    return Framing(records, pos)


# -- scalars and names ------------------------------------------------------------


def widen_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32, as a float64.

    numpy prints a float32 that way (the Dragon4 shortest form), several times faster than trying digits.
    """
    if not math.isfinite(value):
        return value
    return float(str(numpy.float32(value)))


def _tensor_scalar(tensor: Any) -> float | None:
    """The value of a rank-0 (or one-element) numeric tensor; None for anything else."""
    if any(dim.size != 1 for dim in tensor.tensor_shape.dim):
        return None
    dtype = tensor.dtype
    fmt = _CONTENT_FORMATS.get(dtype)
    if fmt is None:
        return None
    if tensor.tensor_content:
        if len(tensor.tensor_content) != struct.calcsize(fmt):
            return None
        raw = float(struct.unpack(fmt, tensor.tensor_content)[0])
    elif dtype == _DT_FLOAT and len(tensor.float_val) == 1:
        raw = float(tensor.float_val[0])
    elif dtype == _DT_DOUBLE and len(tensor.double_val) == 1:
        raw = float(tensor.double_val[0])
    elif dtype == _DT_HALF and len(tensor.half_val) == 1:
        raw = float(struct.unpack("<e", struct.pack("<H", tensor.half_val[0]))[0])
    elif dtype in (_DT_INT64,) and len(tensor.int64_val) == 1:
        raw = float(tensor.int64_val[0])
    elif dtype in (_DT_INT32, _DT_INT16, _DT_INT8, _DT_UINT8, _DT_UINT16) and len(tensor.int_val) == 1:
        raw = float(tensor.int_val[0])
    elif dtype == _DT_BOOL and len(tensor.bool_val) == 1:
        raw = float(tensor.bool_val[0])
    else:
        return None
    return widen_float32(raw) if dtype == _DT_FLOAT else raw


def scalar_value(value: Any, plugin: str) -> float | None:
    """A summary value's number when it is a scalar (see the module docstring), else None."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return widen_float32(float(value.simple_value))
    if kind == "tensor" and plugin in ("", "scalars"):
        return _tensor_scalar(value.tensor)
    return None


def metric_name(folder: str, tag: str) -> str:
    """The metric a tag in an event file in `folder` (the file's directory name) stands for."""
    if folder == "train":
        return tag.removeprefix("epoch_")
    if folder == "validation":
        return "val_" + tag.removeprefix("epoch_")
    prefix = tag.replace("/", "_") + "_"
    if folder.startswith(prefix) and len(folder) > len(prefix):
        return f"{tag}/{folder[len(prefix) :]}"
    return tag


def points_from_event(event: Any, folder: str, plugins: dict[str, str]) -> list[MetricPoint]:
    """The scalar points of one Event; `plugins` remembers each tag's plugin across the file's events."""
    if event.WhichOneof("what") != "summary":
        return []
    points: list[MetricPoint] = []
    time_us = int(event.wall_time * 1_000_000)
    for value in event.summary.value:
        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
            plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
        number = scalar_value(value, plugins.get(value.tag, ""))
        if number is None or not math.isfinite(number):
            continue
        points.append(
            MetricPoint(
                name=storable(metric_name(folder, value.tag)),  # tags and folder names may hold anything
                step=event.step,
                value=number,
                time_us=time_us,
                source=SOURCE_TENSORBOARD,
            )
        )
    return points


# -- tailing a folder ---------------------------------------------------------------


def is_event_file(name: str) -> bool:
    return ".tfevents." in name


@dataclass
class _FileTail:
    offset: int = 0
    plugins: dict[str, str] = field(default_factory=dict)
    #: Offset of a record whose CRC failed on the last poll (believed if it fails again there).
    suspect: int | None = None
    given_up: bool = False


class TensorBoardTail:
    """Follows every event file under a folder; each `poll` returns the points of records completed since."""

    def __init__(self, root: Path, poll_bytes: int = DEFAULT_POLL_BYTES) -> None:
        self.root = root
        self.poll_bytes = poll_bytes
        self._files: dict[Path, _FileTail] = {}
        #: Messages for the run's log (a corrupt record, an unreadable file); the caller empties it.
        self.problems: list[str] = []
        #: Points to pass over per file (relative path): a resumed capture's, sent by a previous agent process.
        self.skip: dict[str, int] = {}
        #: (file, points) of each file's points a poll returned, in their order; the caller empties it.
        self.read_counts: list[tuple[str, int]] = []

    def _event_files(self) -> list[Path]:
        found: list[Path] = []
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            found.extend(Path(folder) / name for name in sorted(files) if is_event_file(name))
        return found

    def poll(self) -> list[MetricPoint]:
        """Points from the records appended (and completed) since the last poll, file by file in path order.

        At most `poll_bytes` are read from each file (more for one record that is bigger).
        """
        return self._poll(self.poll_bytes)

    def drain(self) -> list[MetricPoint]:
        """Everything complete now, however much (for the last read once the script has exited)."""
        return self._poll(None)

    def _poll(self, budget: int | None) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for path in self._event_files():
            tail = self._files.setdefault(path, _FileTail())
            if not tail.given_up:
                try:
                    read = self._read(path, tail, budget)
                    rel = self._rel(path)
                    if skip := min(self.skip.get(rel, 0), len(read)):
                        del read[:skip]
                        self.skip[rel] -= skip
                    if read:
                        self.read_counts.append((rel, len(read)))
                    points.extend(read)
                except UnsafeOutputFile as e:
                    # A link or a FIFO the run planted (runyard.agent.output_files): never read, said once.
                    self.problems.append(str(e))
                    tail.given_up = True
                except OSError as e:
                    self.problems.append(f"{self._rel(path)}: {e.strerror or e}")
        return points

    def _read(self, path: Path, tail: _FileTail, budget: int | None) -> list[MetricPoint]:
        folder = path.parent.name if path.parent != self.root else ""
        points: list[MetricPoint] = []
        with os.fdopen(open_run_file(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < tail.offset:
                self.problems.append(f"{self._rel(path)} shrank; reading it again from the start")
                tail.offset, tail.plugins, tail.suspect = 0, {}, None
            start = tail.offset
            while tail.offset < size and not tail.given_up:
                left = size - tail.offset if budget is None else min(size - tail.offset, budget - (tail.offset - start))
                if left <= 0:
                    break
                f.seek(tail.offset)
                framing = split_records(f.read(left))
                if not framing.records and framing.bad is None:
                    whole = None if framing.next_length is None else _HEADER + framing.next_length + _FOOTER
                    if whole is None or whole <= left or size - tail.offset < whole:
                        break  # a partial record: wait for the writer
                    # One record bigger than the budget: read just that record.
                    f.seek(tail.offset)
                    framing = split_records(f.read(whole))
                points.extend(self._decode(path, tail, folder, framing.records))
                tail.offset += framing.consumed
                if framing.bad is not None:
                    if not self._bad_record(path, tail, framing):
                        break
                elif framing.records:
                    tail.suspect = None
                else:
                    break
        return points

    def _decode(self, path: Path, tail: _FileTail, folder: str, records: list[bytes]) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        for record in records:
            try:
                event = event_pb2.Event.FromString(record)
            except Exception:  # a record whose CRC matched but is not an Event: not ours to fail on
                self.problems.append(f"{self._rel(path)}: a record near byte {tail.offset} is not a TensorBoard event")
                continue
            points.extend(points_from_event(event, folder, tail.plugins))
        return points

    def _bad_record(self, path: Path, tail: _FileTail, framing: Framing) -> bool:
        """Deal with a record whose CRC failed at `tail.offset`; True when reading may go on past it."""
        if tail.suspect != tail.offset:
            tail.suspect = tail.offset  # perhaps a write in progress: look again next poll
            return False
        tail.suspect = None
        if framing.bad == "data" and framing.next_length is not None:
            self.problems.append(f"{self._rel(path)}: skipped a corrupt record at byte {tail.offset}")
            tail.offset += _HEADER + framing.next_length + _FOOTER
            return True
        self.problems.append(f"{self._rel(path)}: corrupt record length at byte {tail.offset}; not read further")
        tail.given_up = True
        return False

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))
