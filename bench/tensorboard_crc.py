"""What checking TensorBoard records costs the agent: CRC-32C throughput, native against the Python loop.

The agent verifies both checksums of every record it reads from the event files
a run writes under RESULT_DIR (runyard.agent.tensorboard.split_records), on the
agent's CPU beside the training job. Measured side by side in one process on
the same buffer of real framed records (scalar events as torch writes them):
`split_records(verify=True)` with google-crc32c's C build and with the
pure-Python fallback, the loop as it was before (its copy here: the Python CRC
through per-record slices), and the bare checksum of a 1 MiB block with each.
Prints JSON: MiB/s of each, the ratios native / Python and now / before, and
the load average.

    .venv/bin/python bench/tensorboard_crc.py [--mib 4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import struct
import time
from collections.abc import Callable

from tensorboard.compat.proto import event_pb2, summary_pb2

from runyard.agent import tensorboard as tb

MIB = 1024 * 1024


def framed_events(size: int) -> bytes:
    """TFRecord-framed scalar events (the shape of torch's SummaryWriter output) up to about `size` bytes."""
    out = bytearray()
    step = 0
    while len(out) < size:
        value = summary_pb2.Summary.Value(tag="train/loss", simple_value=1.0 / (step + 1))
        data = event_pb2.Event(wall_time=1.7e9 + step, step=step, summary=summary_pb2.Summary(value=[value]))
        raw = data.SerializeToString()
        header = struct.pack("<Q", len(raw))
        out += header + struct.pack("<I", tb.masked_crc32c(header)) + raw + struct.pack("<I", tb.masked_crc32c(raw))
        step += 1
    return bytes(out)


def baseline_split_records(buffer: bytes) -> int:
    """The agent's loop before google-crc32c (per-record slicing, the Python CRC): the side-by-side peer."""

    def masked(data: bytes) -> int:
        crc = tb.python_crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    records, pos, end = 0, 0, len(buffer)
    while end - pos >= 12:
        header = buffer[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        if masked(header) != struct.unpack_from("<I", buffer, pos + 8)[0]:
            break
        if end - pos < 12 + length + 4:
            break
        data = buffer[pos + 12 : pos + 12 + length]
        if masked(data) != struct.unpack_from("<I", buffer, pos + 12 + length)[0]:
            break
        records += 1
        pos += 12 + length + 4
    return records


def best_mib_s(work: Callable[[], object], nbytes: int, repeat: int) -> float:
    """The best of `repeat` timings, as MiB/s (the least disturbed by the other jobs on the machine)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return nbytes / MIB / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=4.0, help="event data to verify per timing (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="timings per variant; the best counts (default 5)")
    args = parser.parse_args()
    native = tb._native_crc32c()
    buffer = framed_events(int(args.mib * MIB))
    block = random.Random(0).randbytes(MIB)
    result: dict[str, object] = {
        "bench": "tensorboard_crc",
        "native": "google-crc32c (C)" if native is not None else "missing: pip install google-crc32c",
        "event_bytes": len(buffer),
        "load_average": os.getloadavg(),
    }
    variants: dict[str, Callable[[bytes], int]] = {"python": tb.python_crc32c}
    if native is not None:
        variants["native"] = native
    records = None
    for name, checksum in variants.items():
        tb.crc32c = checksum  # split_records reads the module's crc32c at each call
        try:
            framing = tb.split_records(buffer)
            records = records or len(framing.records)
            assert len(framing.records) == records and framing.consumed == len(buffer)
            result[f"{name}_split_records_mib_s"] = round(
                best_mib_s(lambda: tb.split_records(buffer), len(buffer), args.repeat), 1
            )
            result[f"{name}_checksum_mib_s"] = round(
                best_mib_s(functools.partial(checksum, block), MIB, args.repeat), 1
            )
        finally:
            tb.crc32c = native or tb.python_crc32c
    result["records"] = records
    assert baseline_split_records(buffer) == records
    result["before_split_records_mib_s"] = round(
        best_mib_s(functools.partial(baseline_split_records, buffer), len(buffer), args.repeat), 1
    )
    if native is not None:
        for what in ("split_records", "checksum"):
            fast = float(str(result[f"native_{what}_mib_s"]))
            slow = float(str(result[f"python_{what}_mib_s"]))
            result[f"{what}_ratio_native_over_python"] = round(fast / slow, 1)
        now, before = (float(str(result[f"{k}_split_records_mib_s"])) for k in ("native", "before"))
        result["split_records_ratio_now_over_before"] = round(now / before, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
