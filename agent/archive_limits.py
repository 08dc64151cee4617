"""How much a code archive may expand to on an agent's disk.

The server caps the compressed upload (`--max-code-bytes`), but gzip shrinks
runs of zeros a thousandfold: a 1 MB archive can declare a 1 GiB file, or a
million empty ones. The agent reads the archive's headers one by one and
stops at the first member that takes the total past a limit, before anything
is written and before the rest is decompressed. Extraction then counts again
as it writes, so the limit holds even if the archive changed in between.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from typing import Any

#: Defaults: far above any code folder (data belongs in `data:`), far below a disk.
MAX_EXTRACTED_BYTES = 512 * 1024 * 1024
MAX_EXTRACTED_FILES = 50_000


class ArchiveTooLarge(Exception):
    """The archive expands past a limit; the message names the limit and how to change it."""


@dataclass
class ExtractionBudget:
    max_bytes: int = MAX_EXTRACTED_BYTES
    max_files: int = MAX_EXTRACTED_FILES
    bytes_used: int = field(default=0, init=False)
    files_used: int = field(default=0, init=False)

    def take(self, member: tarfile.TarInfo) -> None:
        """Count one member; ArchiveTooLarge once the archive has more than the budget allows."""
        self.files_used += 1
        if self.files_used > self.max_files:
            raise ArchiveTooLarge(
                f"the code archive has more than {self.max_files} entries (the agent's --max-code-files)"
            )
        if member.isfile():
            self.bytes_used += member.size
            if self.bytes_used > self.max_bytes:
                raise ArchiveTooLarge(
                    f"the code archive expands to more than {self.max_bytes} bytes"
                    f" ({member.name!r} takes it to {self.bytes_used}; the agent's --max-code-extract-bytes)"
                )


def scan_members(tar: tarfile.TarFile, budget: ExtractionBudget) -> list[tarfile.TarInfo]:
    """Every member's header, read one at a time and counted as read (tar.getmembers() reads all first)."""
    members: list[tarfile.TarInfo] = []
    for member in tar:
        budget.take(member)
        members.append(member)
    return members


def counting_filter(budget: ExtractionBudget) -> Any:
    """Python's `data` extraction filter, counting each member again as it is written."""

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        budget.take(member)
        return tarfile.data_filter(member, dest)

    return check
