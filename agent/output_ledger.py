"""How much of an attempt's output files was sent, on disk, so a restarted agent resumes exactly.

One file per attempt beside its holdings record (``WORK/.attempts/<run>~<attempt>.output``),
rewritten before each batch of output is sent: the counts the batch reaches
(`OutputOffsets`) and the batch itself, its event ids and content. An agent
killed while a batch was on its way sends that batch again, byte for byte,
before anything new; the control plane stores a report once per event id
(JetStream's Nats-Msg-Id window, then the event store), so it is stored exactly
once whether or not the first send got through.

The batch's content is kept rather than byte ranges to rebuild it from: its
agent lines exist nowhere else, and rebuilding the very same message (line
order across stdout, stderr and the agent, each line's time) from ranges
needs as much state. The write is one in-place write of a slot file
(see `OutputLedger`; no fsync: the record must outlive the agent process, and the
runs it describes do not outlive the host); a quiet run's batch is a few
hundred bytes, a chatty one's at most the batch limits (~0.6 MB), written a
few times a second. bench/ledger_write.py measures it.

Format of a record: a JSON header line (version, counts, each pending report's
id, kind and length), then the reports' bytes (`RunLogged` / `RunMetricsReported`).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from pathlib import Path

import structlog
from google.protobuf.message import DecodeError

from runyard.agent.capture import OutputOffsets, PendingReport
from runyard.v1.events_pb2 import RunLogged, RunMetricsReported

log = structlog.get_logger("runyard.agent.output_ledger")

VERSION = 1
# A slot: magic, CRC-32 of the body, sequence number, body length; then the body (`encode`).
_SLOT_HEADER = struct.Struct("<4sIQI")
_MAGIC = b"RYOL"
_COUNTS = ("stdout_lines", "stderr_lines", "stdout_points", "jsonl_points")


def encode(offsets: OutputOffsets) -> bytes:
    pending = []
    payloads = []
    for report in offsets.pending:
        if report.lines:
            kind, data = "lines", RunLogged(lines=report.lines).SerializeToString()
        else:
            kind, data = "points", RunMetricsReported(points=report.points).SerializeToString()
        pending.append({"id": report.event_id, "kind": kind, "bytes": len(data)})
        payloads.append(data)
    header = {
        "v": VERSION,
        **{k: getattr(offsets, k) for k in _COUNTS},
        "tensorboard": dict(offsets.tensorboard),
        "pending": pending,
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(payloads)


def decode(data: bytes) -> OutputOffsets:
    """Raises ValueError on anything but a whole record of this version."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    header = json.loads(head)
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise ValueError(f"unknown ledger version {header.get('v') if isinstance(header, dict) else header!r}")
    counts = {k: int(header[k]) for k in _COUNTS}
    tensorboard = tuple(sorted((str(rel), int(n)) for rel, n in header["tensorboard"].items()))
    if any(n < 0 for n in counts.values()) or any(n < 0 for _, n in tensorboard):
        raise ValueError("negative count")
    pending = []
    at = 0
    for item in header["pending"]:
        size = int(item["bytes"])
        chunk = body[at : at + size]
        if len(chunk) != size:
            raise ValueError("record cut short")
        at += size
        if item["kind"] == "lines":
            pending.append(PendingReport(str(item["id"]), lines=tuple(RunLogged.FromString(chunk).lines)))
        elif item["kind"] == "points":
            pending.append(PendingReport(str(item["id"]), points=tuple(RunMetricsReported.FromString(chunk).points)))
        else:
            raise ValueError(f"unknown pending kind {item['kind']!r}")
    if at != len(body):
        raise ValueError("trailing bytes")
    return OutputOffsets(**counts, tensorboard=tensorboard, pending=tuple(pending))


class OutputLedger:
    """One attempt's record (an `OffsetLedger` for `Capture`), in two slot files written in turn.

    Each save overwrites the older slot in place (``pwrite``; the header holds
    a sequence number, the length and a CRC-32), and a load takes the newest
    slot that checks out. Not write-to-temporary + rename: ext4 starts writing
    back the data of a file renamed over another (auto_da_alloc), which made a
    save cost milliseconds here; an in-place write costs a copy to the page
    cache. A slot torn by a crash mid-write fails its check, and the other slot
    then holds the record from before the batch that was never sent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._slots = (path.with_name(path.name + ".0"), path.with_name(path.name + ".1"))
        self._seq: int | None = None

    def save(self, offsets: OutputOffsets) -> None:
        if self._seq is None:  # go on from a previous agent process's records
            self._seq = max((seq for seq, _ in self._read_slots()), default=0)
        self._seq += 1
        body = encode(offsets)
        data = _SLOT_HEADER.pack(_MAGIC, zlib.crc32(body), self._seq, len(body)) + body
        slot = self._slots[self._seq % 2]
        for _ in range(100):  # the holdings folder may be removed between our mkdir and our open
            with contextlib.suppress(FileNotFoundError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(slot, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    view = memoryview(data)
                    at = 0
                    while at < len(data):
                        at += os.pwrite(fd, view[at:], at)
                finally:
                    os.close(fd)
                return
        raise OSError(f"could not write the output ledger {slot}")

    def _read_slots(self) -> list[tuple[int, bytes]]:
        """(sequence, body) of each slot that checks out."""
        found = []
        for slot in self._slots:
            try:
                data = slot.read_bytes()
            except FileNotFoundError:
                continue
            if len(data) < _SLOT_HEADER.size:
                continue
            magic, crc, seq, length = _SLOT_HEADER.unpack_from(data)
            body = data[_SLOT_HEADER.size : _SLOT_HEADER.size + length]
            if magic == _MAGIC and len(body) == length and zlib.crc32(body) == crc:
                found.append((seq, body))
        return found

    def load(self) -> OutputOffsets | None:
        """The newest saved record; None when there is none. A damaged one is logged and read as none."""
        slots = sorted(self._read_slots(), reverse=True)
        if not slots:
            return None
        try:
            return decode(slots[0][1])
        except (ValueError, KeyError, TypeError, DecodeError) as e:
            log.error(
                "output ledger unreadable; the output is sent again from the start", path=str(self.path), error=repr(e)
            )
            return None

    def remove(self) -> None:
        for slot in self._slots:
            with contextlib.suppress(FileNotFoundError):
                slot.unlink()
