"""Property: whatever the template, a value the scanner lets through never runs as shell code (issue 9).

Two generators. Templates built from random shell fragments (quotes, $(...),
backticks, $((...)), ${...}, backslashes, here-documents, comments, case) get a
value built to break out of each of them: when `quoting_problems` finds
nothing, the rendered command is run by a real `/bin/sh` (or bash) in a temporary folder
and the value's `touch pwned` must not have happened. Templates built by
wrapping one `printf` of the value in shell constructs get any text as the
value: where every wrapper is safe the template must be accepted and the
printf must have received the value verbatim, once, and nothing else may have
run; other accepted templates must not run the value's `touch pwned`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
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
    "\\\n",
    "\\ ",
    " ",
    "\n",
    "a",
    ";",
    ";;",
    "#",
    " #",
    "\n#",
    "$((",
    "((",
    "))",
    "$[",
    "]",
    "a[",
    "((1 << E))\n",
    "${",
    "}",
    "$'",
    "cat <<E\n",
    "cat <<'E'\n",
    "\nE\n",
    "sh -c ",
    "(",
    "case a in a)",
    " esac",
    "<",
]

#: Pieces of a value: ways out of every context, then something to run.
BREAKOUTS = ["'", '"', "`", ")", "))", "}", "]", "\\", "\n", "\nE\n", "#", ";", "&", "|", " ", "$(", "$'"]
PAYLOADS = ["touch pwned", "$(touch pwned)", "`touch pwned`", "a[$(touch pwned)]", "\ntouch pwned\n"]

hostile_values = st.builds(
    lambda before, payload, after: f"{''.join(before)}{payload}{''.join(after)}",
    st.lists(st.sampled_from(BREAKOUTS), max_size=4),
    st.sampled_from(PAYLOADS),
    st.lists(st.sampled_from(BREAKOUTS), max_size=4),
)


#: The agent runs `/bin/sh -c` (dash here); an image's /bin/sh may be bash.
SHELLS = ["/bin/sh"] + (["bash"] if shutil.which("bash") else [])
shells = st.sampled_from(SHELLS)


def run(command: str, folder: Path, shell: str = "/bin/sh") -> None:
    subprocess.run(
        [shell, "-c", command], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, timeout=5, check=False
    )


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=14), value=hostile_values, shell=shells)
def test_a_template_the_scanner_accepts_never_runs_a_value(parts: list[str], value: str, shell: str) -> None:
    template = "".join(parts)
    assume("${x}" in template)
    if quoting_problems(template, {"x"}):
        return
    with tempfile.TemporaryDirectory() as where:
        folder = Path(where)
        # A template that runs its own argument as a script (`sh -c ${x}`) runs any value by design:
        # a value with nothing to break out of shows it. No fragment writes a file, so any file is the value's.
        run(render_command(template, {"x": "touch canary"}), folder, shell)
        assume(not any(folder.iterdir()))
        run(render_command(template, {"x": value}), folder, shell)
        made = sorted(p.name for p in folder.iterdir())
        assert not made, f"template {template!r} ran the value {value!r}: {made}"


CORE = "printf %s ${x} >>got"

#: (wrapper, whether a value placed in it is one inert word, so the template must be accepted).
WRAPPERS: list[tuple[str, bool]] = [
    ("{}", True),
    ("( {}\n)", True),
    ("{{\n{}\n}}", True),
    (": $( {}\n)", True),
    (': "$( {}\n)"', True),
    (": `{}`", False),
    ("if true; then\n{}\nfi", True),
    ("case a in a)\n{}\n;; esac", True),
    ("{} # a note on ${{x}}\n", True),
    ("# ${{x}}\n{}", True),
    ("true;# ${{x}}\n{}", True),
    ("true \\\n# ${{x}}\n{}", True),
    (": $(# ${{x}}\n{}\n)", True),
    ("(true)# ${{x}}\n{}", True),
    ("(( 1 ))\n{}", True),
    ("{}\n: <<E\n#${{x}}\nE\n", False),
    ("cat <<'E' >/dev/null\n# ${{x}}\nE\n{}", False),
    ("echo a\\ #' ${{x}}'\n{}", False),
    ("echo a\\\n#' ${{x}}'\n{}", False),
    (": $(case a in a)# ${{x}}\n;; esac)\n{}", False),
    ("sh -c '{}'", False),
    (': "{}"', False),
    (": $[1 + ${{x}}]\n{}", False),
    (": $'\\'' ${{x}} '\n{}", False),
]

#: Any text a manifest can store (no NUL, no lone surrogate), with the shell's own characters often.
any_value = st.text(
    st.one_of(
        st.sampled_from(list("'\"`$()[]{}\\\n\t #;&|<>*?~!=%E")),
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    wrappers=st.lists(st.sampled_from(WRAPPERS), min_size=1, max_size=3),
    value=any_value | hostile_values,
    shell=shells,
)
def test_an_accepted_value_arrives_verbatim_as_one_argument(
    wrappers: list[tuple[str, bool]], value: str, shell: str
) -> None:
    template = CORE
    for wrapper, _ in wrappers:
        template = wrapper.format(template)
    refused = bool(quoting_problems(template, {"x"}))
    # A case inside $(...) is refused whole: the scanner does not follow its patterns' ")".
    safe = all(safe for _, safe in wrappers) and not ("$(" in template and "case" in template)
    assert not (safe and refused), f"template {template!r} is safe but refused"
    if refused:
        return
    if safe:
        with tempfile.TemporaryDirectory() as where:
            folder = Path(where)
            run(render_command(template, {"x": value}), folder, shell)
            made = sorted(p.name for p in folder.iterdir())
            assert made == ["got"], f"template {template!r} ran the value {value!r}: {made}"
            got = (folder / "got").read_bytes().decode("utf-8", "surrogateescape")
            assert got == value, f"template {template!r} got {got!r}"
        return
    # Wrappers that are refused alone may be accepted nested (their quotes cancel out): the printf may then get
    # less, and the template may write odd files of its own, but the value's touch must not run.
    with tempfile.TemporaryDirectory() as where:
        run(render_command(template, {"x": "touch canary"}), Path(where), shell)
        assume(not any("canary" in p.name for p in Path(where).iterdir()))
    with tempfile.TemporaryDirectory() as where:
        run(render_command(template, {"x": value}), Path(where), shell)
        made = sorted(p.name for p in Path(where).iterdir())
        assert not any("pwned" in name for name in made), f"template {template!r} ran the value {value!r}: {made}"
