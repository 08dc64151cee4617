"""Property: whatever the template, a value the scanner lets through never runs as shell code (issue 9).

Templates are built from shell fragments (quotes, $(...), backticks, $((...)),
${...}, backslashes, here-documents, comments); values are built to break out of
each of them. When `quoting_problems` finds nothing, the rendered command is run
by a real `sh`, and the value's `touch` must not have happened.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runyard.server.domain.command_quoting import quoting_problems
from runyard.server.domain.command_template import render_command

FRAGMENTS = [
    "echo ",
    "${x}",
    "'",
    '"',
    "`",
    "$(",
    ")",
    "\\",
    " ",
    "a",
    ";",
    "#",
    "$((",
    "))",
    "${",
    "}",
    "$'",
    "cat <<E\n",
    "\nE\n",
    "sh -c ",
    "(",
]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12),
    breakout=st.sampled_from(["'", '"', "`", ")", "}", "\\", ""]),
)
def test_a_template_the_scanner_accepts_never_runs_a_value(
    tmp_path_factory: object, parts: list[str], breakout: str
) -> None:
    template = "".join(parts)
    if "${x}" not in template or quoting_problems(template, {"x"}):
        return
    folder = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    marker = folder / "pwned"
    value = f"{breakout}; touch {marker}; $(touch {marker}) `touch {marker}` {breakout}"
    try:
        subprocess.run(
            ["sh", "-c", render_command(template, {"x": value})],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=5,
        )
        assert not marker.exists(), f"template {template!r} ran the value"
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
