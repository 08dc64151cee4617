"""How much a manifest may ask for, and the text it may hold.

A manifest is parsed on every submit, by the scheduler's admission check and
again whenever a read model is rebuilt, and it is returned in full by the API.
So its cost must be linear in its size and the size itself bounded: a 100 KB
list of categorical values must not take minutes, and two large manifests must
not make `ListExperiments` answer more than a default gRPC client accepts.

Numbers are bounded where they enter. Hyperparameter values travel as
`google.protobuf.Value` (a double) and through Optuna and `random`, so
integers stay within 2**53 (exact as a double); durations stay within a
`datetime`'s range. Text must be storable by every backend (PostgreSQL text
refuses NUL, UTF-8 refuses lone surrogates).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from runyard.server.domain.errors import FieldError

#: YAML escapes that can make a NUL or a lone surrogate; without one, and with storable text, the walk is skipped.
_RISKY_ESCAPE = re.compile(r"\\(?:0|x00|u0000|U00000000|u[dD][89a-fA-F]|U0000[dD][89a-fA-F])")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: The YAML text of one manifest, in UTF-8 bytes.
MAX_MANIFEST_BYTES = 512 * 1024
#: Values of one categorical hyperparameter.
MAX_VALUES_PER_HYPERPARAMETER = 10_000
#: Hyperparameters of one manifest.
MAX_HYPERPARAMETERS = 100
#: The largest integer anywhere in a manifest: exact as a double (hyperparameters reach runs as JSON numbers).
MAX_SAFE_INTEGER = 2**53
#: Budgets and durations: ten years, far below a datetime's range.
MAX_DURATION_S = 10 * 366 * 86400.0
MAX_GPU_HOURS = 1e9
#: A string value (categorical, const, env): every run carries it in its command and its hyperparameters.
MAX_VALUE_CHARS = 4096
#: An image reference (`registry/name:tag` or `name@sha256:...`): OCI's own limit on a repository name is 255.
MAX_IMAGE_CHARS = 512
#: A framework version ("2.13", "2.13.0+cu124").
MAX_VERSION_CHARS = 64
#: A run's command with the longest values filled in: runs are listed and watched by the thousand.
MAX_COMMAND_CHARS = 64 * 1024


def too_large(text: str) -> FieldError | None:
    """The manifest's size error, before any parsing is spent on it."""
    # Characters first: a str of more characters than bytes allowed is over without encoding it.
    if len(text) > MAX_MANIFEST_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_BYTES:
        return FieldError(
            "manifest", f"is larger than {MAX_MANIFEST_BYTES // 1024} KiB; put large value lists in data files"
        )
    return None


def unstorable(text: str) -> str | None:
    """Why the text cannot be stored (NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "must not contain the NUL character (\\0)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    return None


def may_hold_unstorable(text: str) -> bool:
    """Whether parsing storable YAML text can yield unstorable strings (only through those escapes)."""
    return _RISKY_ESCAPE.search(text) is not None


def text_errors(doc: object) -> list[FieldError]:
    """Every key or string value of a parsed YAML document that cannot be stored, under its dotted path.

    Iterative (a deeply nested document cannot exhaust the stack) and linear in
    the document; YAML aliases are visited once per distinct node.
    """
    errors: list[FieldError] = []
    seen: set[int] = set()
    pending: list[tuple[str, object]] = [("", doc)]
    while pending:
        path, node = pending.pop()
        if isinstance(node, str):
            problem = unstorable(node)
            if problem is not None:
                errors.append(FieldError(path or "manifest", problem))
            continue
        if not isinstance(node, dict | list) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, list):
            pending.extend((f"{path}[{i}]", item) for i, item in enumerate(node))
            continue
        for key, item in node.items():
            shown = key if not isinstance(key, str) or unstorable(key) is None else ascii(key)
            at = f"{path}.{shown}" if path else str(shown)
            if isinstance(key, str) and (problem := unstorable(key)) is not None:
                errors.append(FieldError(at, f"the name {problem}"))
                continue
            pending.append((at, item))
    return errors


def longest_command(template: str, longest_value: Mapping[str, int]) -> int:
    """An upper bound of a rendered command's length: each placeholder of a name in `longest_value` replaced by
    that name's longest shell-quoted value. Linear in the template."""
    length = len(template)
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name in longest_value:
            length += longest_value[name] - len(match.group(0))
    return length


def quoted_length(text: str) -> int:
    """len(shlex.quote(text)) without building it: each ' becomes '"'"' inside the added quotes."""
    return len(text) + 4 * text.count("'") + 2


def safe_float(value: int | float) -> float | None:
    """The number as a finite float, or None (an integer beyond a double's range, inf, nan)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
