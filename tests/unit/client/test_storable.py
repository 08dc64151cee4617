"""The one rule for text both backends can store (runyard.storable)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runyard.storable import REPLACEMENT, fit, is_storable, make_storable, storable, storable_bytes
from runyard.v1.agent_pb2 import AgentReport, AttemptFailed
from runyard.v1.common_pb2 import LogLine
from runyard.v1.events_pb2 import AgentRegistered

ANY_TEXT = st.text(alphabet=st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)))


def test_nul_and_lone_surrogates_become_the_replacement_character() -> None:
    assert storable("boom\x00x") == f"boom{REPLACEMENT}x"
    assert storable("acc\ud800") == f"acc{REPLACEMENT}"
    assert storable("naïve ✓ 😀") == "naïve ✓ 😀"
    assert not is_storable("a\x00") and not is_storable("\udfff") and is_storable("é")


def test_bytes_a_process_printed_keep_their_valid_utf8() -> None:
    assert storable_bytes(b"boom\x00x \xff\xfe caf\xc3\xa9") == f"boom{REPLACEMENT}x {REPLACEMENT}{REPLACEMENT} café"


@given(ANY_TEXT)
def test_storable_text_is_storable_unchanged_when_it_was_and_encodes_as_utf8(text: str) -> None:
    stored = storable(text)
    assert is_storable(stored) and "\x00" not in stored
    stored.encode("utf-8")
    assert len(stored) == len(text)
    assert (stored == text) == is_storable(text)


@given(ANY_TEXT, ANY_TEXT, st.integers(min_value=20, max_value=80))
def test_fit_keeps_short_text_and_keeps_long_ones_apart(a: str, b: str, width: int) -> None:
    fa, fb = fit(a, width), fit(b, width)
    assert len(fa) <= width and is_storable(fa)
    if len(a) <= width:
        assert fa == storable(a)
    if storable(a) != storable(b):
        assert fa != fb
    assert fit(fa, width) == fa


def test_make_storable_cleans_every_text_field_of_a_report_nested_and_mapped() -> None:
    report = AgentReport(agent_id="a1", failed=AttemptFailed(message="bad\x00"))
    make_storable(report)
    assert report.failed.message == f"bad{REPLACEMENT}"
    # A lone surrogate never gets into a message (protobuf refuses it on assignment): NUL is what is left to clean.
    registered = AgentRegistered(hostname="h\x00", labels={"k\x00": "v\x00"}, gpu_ids=["0\x00"])
    make_storable(registered)
    assert registered.hostname == f"h{REPLACEMENT}"
    assert dict(registered.labels) == {f"k{REPLACEMENT}": f"v{REPLACEMENT}"}
    assert list(registered.gpu_ids) == [f"0{REPLACEMENT}"]
    registered.SerializeToString()
    line = LogLine(text="x\x00")
    make_storable(line)
    assert line.text == f"x{REPLACEMENT}"
