"""Sizes in bytes as people write them and read them: one grammar, one way of printing.

The manifest (`resources.memory`), the CLI's settings (flags, RUNYARD_*, the
config file) and every message that prints a size go through here, so a size
copied from one into another means the same thing everywhere.

The grammar, case-insensitive, with blanks allowed around and between the parts:

    size   := number [unit]
    number := digits ["." digits]          digits may be grouped with "_": 104_857_600
    unit   := "B" | prefix ["i"] ["B"]
    prefix := K | M | G | T | P | E

`K`, `M`, ... are powers of 1000 (`1G` = 10**9), `Ki`, `Mi`, ... powers of 1024
(`1Gi` = `1GiB` = 2**30); no unit is bytes. It is the union of what the
manifest and the CLI settings accepted when each had its own parser (the
settings did not know `T`, the manifest not `g` or `mib`), less numbers written
`.5` or `1e3`. Fractions are exact (`Fraction`, not floats) and cut
toward zero: `1.5K` is 1500, `0.1Ki` is 102.

Stdlib only: the CLI imports this module and installs without the server's dependencies.
"""

from __future__ import annotations

import re
from fractions import Fraction

#: The size grammar as a regular expression without flags, so JSON Schema (ECMA-262) can carry it too.
SIZE_PATTERN = r"\s*(\d+(?:_\d+)*(?:\.\d+(?:_\d+)*)?)\s*(?:([kKmMgGtTpPeE])([iI])?)?[bB]?\s*"
_SIZE = re.compile(SIZE_PATTERN, re.ASCII)
_PREFIXES = "kmgtpe"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

EXAMPLES = "e.g. 104857600, 512Mi, 4GiB, 1G, 2T"


def parse_size(text: str) -> int:
    """The number of bytes `text` says ('4Gi' -> 4294967296); ValueError naming the text when it is not a size."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        problem = "is negative" if text.strip().startswith("-") else "is not a size"
        raise ValueError(f"{text!r} {problem} ({EXAMPLES})")
    number, prefix, binary = match.groups()
    factor = 1 if prefix is None else (1024 if binary else 1000) ** (_PREFIXES.index(prefix.lower()) + 1)
    return int(Fraction(number.replace("_", "")) * factor)


def format_bytes(n: int) -> str:
    """`n` bytes in the largest binary unit that keeps the number at 1 or more: 512 B, 256 MiB, 1.5 GiB.

    A whole number of units is printed without a fraction, anything else with
    one decimal, so the text reads back through `parse_size` to `n` within half
    a tenth of its unit (exactly when it is whole).
    """
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" or value.is_integer() else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the last unit always returns")
