"""Text that both event-log backends can store: the one rule for text produced by user code.

PostgreSQL text columns cannot hold NUL (0x00), and UTF-8 cannot encode a lone
surrogate (U+D800..U+DFFF, which a Python str may hold, e.g. from the JSON
"\\ud800" or a file name read with surrogateescape). One such character once
stopped every projection batch. So every text a run produces (log lines,
failure messages, metric names, TensorBoard tags) is made storable where it
is captured, and every text a projector writes passes through here again.

The rule: NUL and each lone surrogate become U+FFFD (the replacement
character); undecodable bytes decode to U+FFFD the same way. Everything else
is kept exactly, so text that was storable already is returned unchanged (and
a replay from position 0 gives the same rows). Where a column has a width,
`fit` shortens longer text to a prefix plus a digest of the whole, so two
different long values stay different.
"""

from __future__ import annotations

import hashlib
import re

from google.protobuf.message import Message

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_DIGEST_CHARS = 16


def is_storable(text: str) -> bool:
    """Whether PostgreSQL and SQLite can both store `text` as it is."""
    if "\x00" in text:
        return False
    return text.isascii() or _UNSTORABLE.search(text) is None


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD; storable text comes back unchanged."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable_bytes(raw: bytes) -> str:
    """Bytes a process printed, as storable text: UTF-8 where valid, U+FFFD for the rest and for NUL."""
    return storable(raw.decode("utf-8", errors="replace"))


def fit(text: str, width: int) -> str:
    """Storable text of at most `width` characters: a longer value keeps its start and a digest of the whole."""
    text = storable(text)
    if len(text) <= width:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    return f"{text[: max(0, width - _DIGEST_CHARS - 1)]}~{digest}"[-width:] if width > 0 else ""


def make_storable(message: Message) -> None:
    """Every text field of `message`, nested and map ones too, made storable in place.

    Protobuf refuses a lone surrogate when it is assigned, so in a message
    this replaces NUL: what a forged report may carry.
    """
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(message, field.name)
            value_field = field.message_type.fields_by_name["value"]
            for key in list(target):
                if value_field.message_type is not None:
                    make_storable(target[key])
                elif isinstance(target[key], str):
                    target[key] = storable(target[key])
            for key in [k for k in target if isinstance(k, str) and storable(k) != k]:
                item = target[key]
                del target[key]
                if value_field.message_type is not None:
                    target[storable(key)].CopyFrom(item)
                else:
                    target[storable(key)] = item
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                make_storable(item)
        elif field.type == field.TYPE_STRING:
            if field.is_repeated:
                value[:] = [storable(v) for v in value]
            else:
                setattr(message, field.name, storable(value))
