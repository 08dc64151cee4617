"""The project's own documentation: generated references fresh, links that lead somewhere.

docs/cli.md and docs/manifest.md are generated (`make docs`); a command, flag or manifest field
changed without regenerating them fails here, as CI runs this file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "digits-pytorch" / "README.md"]
LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")


def test_the_generated_references_match_the_parser_and_the_validator() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\nregenerate with `make docs`"


def test_the_cli_reference_has_every_command() -> None:
    from runyard.client.cli import build_parser

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for name in commands.choices:  # type: ignore[union-attr]
        assert f"\n## runyard {name}\n" in text, name


def test_the_docs_folder_has_what_a_newcomer_looks_for() -> None:
    for name in ("quickstart.md", "manifest.md", "cli.md", "architecture.md", "operating.md"):
        assert (ROOT / "docs" / name).is_file(), name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_to_files_in_the_clone(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "shared/DESIGN.md" not in text, "the project carries its own architecture: docs/architecture.md"
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            continue
        assert (page.parent / target).exists(), f"{page.name}: link to {target} leads nowhere"
