"""Placeholders in comments and here-documents: a hostile value never runs (regressions of the quoting scanner).

Each template here got past the scanner once and ran a value: the manifest is
parsed as at submit, and when it is accepted its command is rendered with the
hostile value and run by a real `/bin/sh` in a temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from runyard.server.domain import events as ev
from runyard.server.domain.command_quoting import comment_placeholders, quoting_problems
from runyard.server.domain.command_template import render_command
from runyard.server.domain.errors import ManifestError
from runyard.server.domain.manifest import parse_manifest
from runyard.server.domain.search_state import Searches
from runyard.v1 import events_pb2

#: Ends a comment (or a here-document line), then runs `touch pwned` in the current folder.
NEWLINE_ESCAPE = "a\ntouch pwned #"
#: Ends single quotes, then runs `touch pwned`.
QUOTE_ESCAPE = "'; touch pwned; '"


def manifest(command: str, *values: str, search: dict[str, object] | None = None) -> str:
    doc = {
        "name": "quoting",
        "command": command,
        "results": "s3://results/quoting",
        "hyperparameters": {"x": {"type": "categorical", "values": list(values)}},
        "search": search or {"method": "grid"},
    }
    return yaml.safe_dump(doc, width=10**9)


def run(command: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", command], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
    )


def refusal(command: str, *values: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest(command, *values))
    return " ".join(e.message for e in caught.value.errors if e.field == "command")


def test_a_value_in_a_comment_stays_in_the_comment(tmp_path: Path) -> None:
    # It was rendered `echo hi # 'a<newline>touch pwned #'`: the newline ended the comment.
    parsed = parse_manifest(manifest("echo hi # ${x}", NEWLINE_ESCAPE, "b"))
    out = run(render_command(parsed.command, {"x": NEWLINE_ESCAPE}), tmp_path)
    assert out.stdout == "hi\n"
    assert not (tmp_path / "pwned").exists()


def test_a_value_outside_the_comment_keeps_its_newlines(tmp_path: Path) -> None:
    # Only the placeholder inside the comment is written without newlines: the argument arrives verbatim.
    parsed = parse_manifest(manifest("printf '[%s]' ${x} # ${x}", NEWLINE_ESCAPE, "b"))
    out = run(render_command(parsed.command, {"x": NEWLINE_ESCAPE}), tmp_path)
    assert out.stdout == f"[{NEWLINE_ESCAPE}]"
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "command",
    [
        "echo hi # ${x}",
        "echo hi;# ${x}",
        "echo hi\n# ${x}\necho there",
        "echo $(# ${x}\necho hi)",
        'echo "$(echo hi # ${x}\n)"',
        "(echo hi)# ${x}",
        "echo hi >/dev/null # ${x}",
        "echo hi \\\n# ${x}",  # a line continuation keeps the comment's word start
        "echo hi\t# ${x}",
    ],
)
def test_every_comment_the_shell_sees_holds_its_value(command: str, tmp_path: Path) -> None:
    assert comment_placeholders(command, {"x"}), command
    parsed = parse_manifest(manifest(command, NEWLINE_ESCAPE, "b"))
    run(render_command(parsed.command, {"x": NEWLINE_ESCAPE}), tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("command", "where"),
    [
        # The scanner skipped a "#" line inside the here-document as if it were a comment.
        ("cat <<E\n#${x}", "after a here-document (<<)"),
        ("cat <<E\nhi\n  # ${x}\nE", "after a here-document (<<)"),
        # "\ " and "\<newline>" keep the word going: the "#" is text, the quotes after it are real.
        ("echo a\\ #' ${x}'", "inside single quotes"),
        ("echo a\\\n#' ${x}'", "inside single quotes"),
        # "#" inside a word is text, not a comment.
        ("echo a#' ${x}'", "inside single quotes"),
        ("echo $(echo a)#' ${x}'", "inside single quotes"),
        # bash's other arithmetic: a[$(cmd)] runs cmd.
        ("echo $[1 + ${x}]", "inside bash's $[...]"),
        ("(( ${x} ))", "inside $((...)) or ((...))"),
        # A "\" in $'...' escapes the value's first quote (bash); dash reads $ then '...'.
        ("echo $'\\${x}'", "inside $'...' quotes"),
        ("echo $'\\'' ${x} '", "inside single quotes"),
        # A pattern's ")" inside $(...) is not the end of the substitution, and a "#" after it is a comment.
        ("echo $(case a in a)# ${x}\n;; esac)", "after a case statement inside $(...)"),
        # dash reads ((...)) as two subshells: "<< 2" there starts a here-document.
        ("(( 1 << 2 ))\necho ${x}\n2", "after a here-document (<<)"),
        # bash runs a $(...) in an array subscript even inside single quotes.
        ("a[${x}]=1", "inside a bash array subscript"),
        ("unset a[${x}]", "inside a bash array subscript"),
        ("a=([${x}]=1)", "inside a bash array subscript"),
    ],
)
def test_a_placeholder_the_scanner_used_to_miss_is_refused_at_submit(command: str, where: str) -> None:
    message = refusal(command, QUOTE_ESCAPE, NEWLINE_ESCAPE)
    assert f"${{x}} is {where}" in message, message


@pytest.mark.parametrize(
    "command",
    [
        "cat <<E\n#${x}",
        "echo a\\ #' ${x}'",
        "echo a\\\n#' ${x}'",
        "echo a#' ${x}'",
        "echo $'\\'' ${x} '",
        "echo $(case a in a)# ${x}\n;; esac)",
        "(( 1 << 2 ))\necho ${x}\n2",
    ],
)
def test_what_those_templates_would_run_with_sh(command: str, tmp_path: Path) -> None:
    """The refusals above are not over-cautious: rendered anyway, each runs a value with /bin/sh."""
    for value in (QUOTE_ESCAPE, NEWLINE_ESCAPE, "$(touch pwned)"):
        run(render_command(command, {"x": value}), tmp_path)
    assert (tmp_path / "pwned").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("command", ["a[${x}]=1", "a=([${x}]=1)", "echo $[1 + ${x}]", "(( ${x} ))", "echo $'\\${x}'"])
def test_what_those_templates_would_run_with_bash(command: str, tmp_path: Path) -> None:
    """An image's /bin/sh may be bash: these run a value there."""
    for value in ("$(touch pwned)", "a[$(touch pwned)]", "\\'' ; touch pwned ; "):
        subprocess.run(["bash", "-c", render_command(command, {"x": value})], cwd=tmp_path, capture_output=True)
    assert (tmp_path / "pwned").exists()


def test_a_placeholder_before_a_here_document_or_in_a_comment_is_no_problem() -> None:
    assert quoting_problems("echo ${x} <<E\nbody\nE", {"x"}) == []
    assert quoting_problems("echo ${x} # it's ${x}, isn't it", {"x"}) == []
    assert comment_placeholders("echo ${x} # ${x} $${x}", {"x"}) == frozenset({12})


def test_a_stored_manifest_with_a_commented_placeholder_still_parses() -> None:
    # Accepted before this scanner: re-reading it (replay, adding a searched run) must not start failing.
    parsed = parse_manifest(manifest("python train.py --opt ${x}  # was: --optimizer ${x}", "sgd momentum", "adam"))
    assert parsed.command.endswith("# was: --optimizer ${x}")


#: Accepted before the scanner saw through "#" in a here-document; refused at submit now.
ONCE_ACCEPTED = "cat <<E\n#${x}\nE\necho ${x}"


def test_a_manifest_in_the_log_is_not_judged_again() -> None:
    text = manifest(ONCE_ACCEPTED, "a b", "c")
    assert "after a here-document" in refusal(ONCE_ACCEPTED, "a b", "c")
    assert parse_manifest(text, stored=True).command == ONCE_ACCEPTED


def test_replaying_an_experiment_accepted_under_older_quoting_rules_still_searches_it() -> None:
    # An experiment logged before its facts were recorded is upcast from its stored manifest
    # (max_parallel: its searcher adds the runs one by one): a stricter scanner must not end the search.
    text = manifest(ONCE_ACCEPTED, "a b", "c", search={"method": "random", "max_runs": 3, "max_parallel": 1})
    logged = events_pb2.ExperimentCreated(experiment_id="exp-old", account_id="acct-1", name="x", manifest_yaml=text)
    created = ev.decode(*ev.encode(logged))  # as read back from the log: upcast, its facts from the manifest
    assert isinstance(created, events_pb2.ExperimentCreated)
    searches = Searches()
    decided = searches.feed(ev.experiment_stream("exp-old"), "exp-old", created, datetime(2026, 3, 2, tzinfo=UTC))
    assert "exp-old" in searches
    assert decided  # its searcher started: the first trials are decided
