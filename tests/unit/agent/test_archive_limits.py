"""A small code archive cannot fill an agent's disk: extraction stops at a byte and a file budget (issue 9)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from runyard.agent.staging import StagingError, safe_extract


class Zeros(io.RawIOBase):
    """`size` zero bytes, read lazily (the archive is built without holding them)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_an_archive_declaring_a_1_gib_file_is_refused_at_its_header(tmp_path: Path) -> None:
    # 1 MB on the wire that would expand to 1 GiB: the header alone says so, so nothing is decompressed further.
    header = tarfile.TarInfo("model.bin")
    header.size = 1 << 30
    path = tmp_path / "code.tar.gz"
    with gzip.open(path, "wb") as out:
        out.write(header.tobuf(format=tarfile.PAX_FORMAT))
        out.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(StagingError, match="expands to more than 536870912 bytes"):
        safe_extract(path, tmp_path / "code")
    assert not (tmp_path / "code").exists()


def test_bytes_are_counted_while_reading_headers_and_nothing_is_written(tmp_path: Path) -> None:
    from runyard.agent.archive_limits import ExtractionBudget

    path = tmp_path / "code.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i in range(4):
            info = tarfile.TarInfo(f"blob-{i}")
            info.size = 8 << 20
            tar.addfile(info, Zeros(info.size))  # type: ignore[arg-type]
    assert path.stat().st_size < 1 << 20
    with pytest.raises(StagingError, match=r"expands to more than 16777216 bytes \('blob-2'"):
        safe_extract(path, tmp_path / "code", ExtractionBudget(max_bytes=16 << 20))
    assert not (tmp_path / "code").exists()


def test_the_number_of_files_is_bounded(tmp_path: Path) -> None:
    from runyard.agent.archive_limits import ExtractionBudget

    path = tmp_path / "code.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i in range(300):
            tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    with pytest.raises(StagingError, match="more than 200 entries"):
        safe_extract(path, tmp_path / "code", ExtractionBudget(max_files=200))
    assert safe_extract(path, tmp_path / "ok", ExtractionBudget(max_files=300)) == 300
