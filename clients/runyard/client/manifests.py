"""`runyard validate` and `runyard schema manifest`: a manifest checked before it is submitted, with no server.

`validate` runs the server's own validator (runyard.server.domain, pure Python:
no database, no network, nothing beyond the base install), so what it accepts
the server's manifest checks accept too, and what it refuses is refused at
submit with the same words. It prints every problem of every file at once, each
under its field path. What only the server knows is not checked here: the
storage prefixes the account may use, the framework versions the registered
agents offer, the account's quota.

`schema manifest` prints the JSON Schema (runyard.server.domain.manifest_schema)
that an editor's YAML language server uses for completion and checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import yaml

# The validator is imported in the commands, not here: every other command (and `--help`) skips it.
if TYPE_CHECKING:
    from runyard.server.domain.errors import FieldError
    from runyard.server.domain.manifest import Manifest

STDIN = "-"


@dataclass
class Checked:
    """One manifest file's verdict: its problems (none: it is valid) and, when valid, what it makes."""

    file: str
    problems: list[FieldError] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "validate",
        help="check manifests offline: every problem at once, each with its field path",
        description="Check experiment manifests with the server's own validator, without a server: every "
        "problem of every file at once, each as FIELD: PROBLEM (e.g. `resources.gpus: must be an integer, not "
        'a string ("two")`). Exit status 0 when all are valid, 1 when any is not. Not checked offline: the '
        "storage prefixes your account may use and the frameworks the agents offer.",
        parents=[output],
    )
    p.set_defaults(func=cmd_validate)
    p.add_argument("manifests", metavar="MANIFEST", nargs="+", help="YAML manifest file ('-' reads stdin)")

    schema = sub.add_parser(
        "schema",
        help="print a JSON Schema (editor completion and checks)",
        description="Print a JSON Schema (draft 2020-12). Save it and point your editor's YAML language server "
        "at it with a first line `# yaml-language-server: $schema=manifest.schema.json`.",
    )
    schema_sub = schema.add_subparsers(dest="schema_command", metavar="WHAT", required=True)
    p = schema_sub.add_parser(
        "manifest",
        help="the experiment manifest's schema, built from the validator's fields and limits",
        description="Print the JSON Schema of an experiment manifest, built from the validator's own fields, "
        "choices and limits: `runyard schema manifest > manifest.schema.json`. It never refuses a manifest "
        "`runyard validate` accepts; cross-field checks it cannot express are left to `runyard validate`.",
    )
    p.set_defaults(func=cmd_schema_manifest)


def check_text(file: str, text: str) -> Checked:
    from runyard.server.domain.errors import ManifestError
    from runyard.server.domain.manifest import parse_manifest

    try:
        manifest = parse_manifest(text)
    except ManifestError as e:
        return Checked(file, e.errors)
    return Checked(file, summary=describe(manifest))


def check_file(file: str) -> Checked:
    from runyard.server.domain.errors import FieldError
    from runyard.server.domain.manifest_limits import MAX_MANIFEST_BYTES

    # At most one byte over the limit: a huge file is refused for its size, not read whole.
    try:
        if file == STDIN:
            data = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
        else:
            with open(file, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        return Checked(file, [FieldError("manifest", f"cannot be read: {e.strerror or e}")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Checked(file, [FieldError("manifest", f"is not UTF-8 text (byte {e.start} is {data[e.start]:#04x})")])
    return check_text(file, text)


def describe(manifest: Manifest) -> str:
    """What a valid manifest makes, in a few words: its name, its search and how many runs at most."""
    from runyard.server.domain.search_space import grid_size

    search = manifest.search
    if search.method == "grid":
        runs = grid_size(manifest.hyperparameters)
    elif search.method == "list":
        runs = len(search.runs)
    elif search.method in ("random", "tpe"):
        runs = search.max_runs
    else:
        runs = 1
    shown = f"{runs} run" + ("" if runs == 1 else "s") if runs is not None else "its runs"
    method = "a single run" if search.method == "single" else f"{search.method} search, {shown}"
    gpus = f", {manifest.resources.gpus} GPU{'s' if manifest.resources.gpus != 1 else ''} each"
    return f"{manifest.name}: {method}" + (gpus if manifest.resources.gpus else "")


def cmd_validate(args: argparse.Namespace) -> int:
    results = [check_file(file) for file in args.manifests]
    output = getattr(args, "output", "table")
    if output in ("json", "yaml"):
        rows = [
            {
                "file": r.file,
                "ok": r.ok,
                "summary": r.summary,
                "problems": [{"field": p.field, "message": p.message} for p in r.problems],
            }
            for r in results
        ]
        if output == "json":
            print(json.dumps(rows, indent=2, ensure_ascii=False))
        else:
            print(yaml.safe_dump(rows, sort_keys=False, allow_unicode=True), end="")
    else:
        for r in results:
            if r.ok:
                print(f"{r.file}: OK ({r.summary})")
                continue
            count = len(r.problems)
            print(f"{r.file}: {count} problem{'s' if count != 1 else ''}")
            for problem in r.problems:
                print(f"  {problem}")
    bad = sum(not r.ok for r in results)
    if len(results) > 1 and output not in ("json", "yaml"):
        print(f"{len(results) - bad} of {len(results)} manifests valid")
    return 1 if bad else 0


def schema_text() -> str:
    """What `runyard schema manifest` prints (docs/manifest.schema.json holds a copy for editors)."""
    from runyard.server.domain.manifest_schema import manifest_schema

    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"


def cmd_schema_manifest(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0
