"""TFRecord checksums: google-crc32c's C build where it is installed, the Python loop where it is not, same values."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import textwrap

import pytest
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_masked_crc32c

from runyard.agent import tensorboard as tb

# The agent extra installs it (scripts/setup.sh does); without it only the fallback's tests run.
try:
    import google_crc32c

    HAVE_NATIVE = True
except ImportError:  # an environment without the agent extra
    HAVE_NATIVE = False

needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason="google-crc32c is not installed: runyard[agent] has it")


@needs_native
def test_the_native_checksum_is_used_when_installed() -> None:
    if google_crc32c.implementation != "c":
        pytest.skip("google-crc32c installed without its C extension")
    assert tb.crc32c is google_crc32c.value


@needs_native
@pytest.mark.parametrize("seed", range(4))
def test_native_and_python_checksums_agree_on_random_data(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 4096, 65_537, rng.randrange(1, 200_000)]
    for size in sizes:
        data = rng.randbytes(size)
        assert google_crc32c.value(data) == tb.python_crc32c(data), size
        assert tb.masked_crc32c(data) == reference_masked_crc32c(data), size


def test_known_crc32c_values() -> None:
    # RFC 3720 B.4 test vectors (iSCSI's CRC-32C) and the classic check value.
    assert tb.python_crc32c(b"123456789") == 0xE3069283
    assert tb.python_crc32c(bytes(32)) == 0x8A9136AA
    assert tb.python_crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tb.python_crc32c(bytes(range(32))) == 0x46DD794E
    assert tb.crc32c(b"123456789") == 0xE3069283


def test_the_python_fallback_when_google_crc32c_cannot_be_imported() -> None:
    """An agent image without the wheel (or a platform without one) still reads and checks event files."""
    script = textwrap.dedent(
        """
        import struct, sys
        sys.modules["google_crc32c"] = None  # import google_crc32c now raises ImportError
        from runyard.agent import tensorboard as tb
        assert tb.crc32c is tb.python_crc32c, tb.crc32c
        data = b"an event"
        header = struct.pack("<Q", len(data))
        record = header + struct.pack("<I", tb.masked_crc32c(header)) + data + struct.pack("<I", tb.masked_crc32c(data))
        framing = tb.split_records(record + record[:-1] + b"x")
        assert framing.records == [data] and framing.bad == "data", framing
        print("fallback ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fallback ok" in done.stdout


def test_a_google_crc32c_without_its_c_build_is_not_used() -> None:
    """Its own pure-Python fallback is no faster than ours: only the C build replaces the loop."""
    script = textwrap.dedent(
        """
        import sys, types
        fake = types.ModuleType("google_crc32c")
        fake.implementation = "python"
        fake.value = lambda data: 0
        sys.modules["google_crc32c"] = fake
        from runyard.agent import tensorboard as tb
        assert tb.crc32c is tb.python_crc32c
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _reference_split(buffer: bytes) -> tb.Framing:
    """The framing read the plain way (TFRecord: u64 length, masked CRC of it, data, masked CRC of the data)."""
    records: list[bytes] = []
    pos = 0
    while len(buffer) - pos >= 12:
        header = buffer[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        if reference_masked_crc32c(header) != struct.unpack_from("<I", buffer, pos + 8)[0]:
            return tb.Framing(records, pos, "header")
        if len(buffer) - pos < 12 + length + 4:
            return tb.Framing(records, pos, None, length)
        data = buffer[pos + 12 : pos + 12 + length]
        if reference_masked_crc32c(data) != struct.unpack_from("<I", buffer, pos + 12 + length)[0]:
            return tb.Framing(records, pos, "data", length)
        records.append(data)
        pos += 12 + length + 4
    return tb.Framing(records, pos)


@pytest.mark.parametrize("seed", range(6))
def test_split_records_reads_torn_and_corrupt_files_as_the_plain_loop_does(seed: int) -> None:
    """A file caught mid-write, a flipped bit in a header or in data: the same records, stop and reason."""
    rng = random.Random(seed)
    frames = bytearray()
    for _ in range(40):
        data = rng.randbytes(rng.choice([0, 1, 30, 60, 500]))
        header = struct.pack("<Q", len(data))
        frames += header + struct.pack("<I", tb.masked_crc32c(header))
        frames += data + struct.pack("<I", tb.masked_crc32c(data))
    for _ in range(30):
        damaged = bytearray(frames[: rng.randrange(len(frames) + 1)])
        if damaged and rng.random() < 0.6:
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        buffer = bytes(damaged)
        expected = _reference_split(buffer)
        assert tb.split_records(buffer) == expected
        # Unverified, the records before the damage are the same (what follows it may be read differently).
        assert tb.split_records(buffer, verify=False).records[: len(expected.records)] == expected.records
