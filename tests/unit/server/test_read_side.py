"""The read side stays a read side: nothing in server/queries/ reaches for a path that writes.

A query that imported the command handlers, the store's append path, ingest or
the scheduler could start writing (or waking things) on a read, and the
one-room layout would only look like one. This reads the imports, so it fails
the moment such an import is added, before any behaviour goes wrong.
"""

from __future__ import annotations

import ast
from pathlib import Path

import runyard.server.queries

ALLOWED = (
    "runyard.server.queries",
    "runyard.server.projections.schema",
    "runyard.server.projections.read_models",  # its pure helpers (utc, is_ended), not the projector
    "runyard.server.domain",
    "runyard.v1",
)


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]  # a name may be a module: judge it as one
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n.startswith("runyard")]


def test_queries_import_only_read_models_the_domain_and_protobuf() -> None:
    folder = Path(runyard.server.queries.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert len(modules) >= 8, "the read-side modules moved here"
    outside = {
        f"{path.name}: {name}"
        for path in modules
        for name in _imports(path)
        if not any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED)
    }
    assert not outside, f"read-side modules import write-side code: {sorted(outside)}"
