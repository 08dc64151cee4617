"""One size grammar and one byte formatter for the manifest, the CLI's settings and every message.

The round trip is what a user relies on: a size Runyard prints (an OOM message,
`runyard storage ls`) can be pasted into a manifest or a flag and means the
same number of bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runyard.server.domain.units import format_bytes, parse_size

KI = 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("104_857_600", 104_857_600),
        ("100MiB", 100 * KI**2),
        ("100mib", 100 * KI**2),
        ("512Mi", 512 * KI**2),
        ("4Gi", 4 * KI**3),
        ("2M", 2_000_000),
        ("1g", 10**9),
        ("1k", 1000),
        ("1KB", 1000),
        ("1.5GiB", int(1.5 * KI**3)),
        ("2T", 2 * 10**12),  # the CLI's settings refused T while the manifest took it
        ("3Ti", 3 * KI**4),
        ("1E", 10**18),
        (" 256 MiB ", 256 * KI**2),
        ("7B", 7),
        ("0.1Ki", 102),  # fractions cut toward zero, exactly
    ],
)
def test_every_way_a_size_is_written_in_the_manifest_or_the_settings(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "lots", "1x", "1i", "1KiBB", "1 K i B", "1e3", ".5G", "1..5", "1_", "_1", "nan", "inf", "1\u212a", "\u0663"],
)
def test_a_text_that_is_not_a_size_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size") as refused:
        parse_size(text)
    assert repr(text) in str(refused.value)


def test_a_negative_size_is_called_negative() -> None:
    with pytest.raises(ValueError, match="'-5M' is negative"):
        parse_size("-5M")


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (256 << 20, "256 MiB"), (2 << 30, "2 GiB"), (3 << 29, "1.5 GiB")],
)
def test_format_bytes_says_it_the_way_a_manifest_would(n: int, text: str) -> None:
    assert format_bytes(n) == text


@given(st.integers(min_value=0, max_value=2**70))
def test_what_is_printed_reads_back_to_the_same_size(n: int) -> None:
    text = format_bytes(n)
    number, unit = text.split(" ")
    unit_bytes = KI ** ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"].index(unit)
    # One decimal: within half a tenth of the unit, plus float rounding of very large counts.
    assert abs(parse_size(text) - n) <= unit_bytes * 0.05 + n * 1e-12 + 1
    if "." not in number and n < 2**53:
        assert parse_size(text) == n


@given(st.integers(min_value=0, max_value=2**64), st.sampled_from(["", "B", "Ki", "KiB", "Mi", "Gi", "Ti", "Pi", "Ei"]))
def test_a_whole_number_of_binary_units_reads_back_exactly(count: int, unit: str) -> None:
    scale = KI ** (["", "K", "M", "G", "T", "P", "E"].index(unit.rstrip("iB").upper()) if unit.rstrip("B") else 0)
    assert parse_size(f"{count}{unit}") == count * scale


def test_the_size_units_import_with_nothing_but_the_standard_library_and_protobuf() -> None:
    """The CLI imports these (and the run states) and will install without the server's dependencies."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import runyard.server.domain.units, runyard.server.domain.run_states\n"
        "extra = sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names\n"
        "               and m.split('.')[0] not in ('google', 'runyard'))\n"
        "ours = sorted(m for m in set(sys.modules) - before if m.startswith('runyard.')\n"
        "              and not m.startswith(('runyard.v1', 'runyard.server.domain')) and m != 'runyard.server')\n"
        "print(extra + ours)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
