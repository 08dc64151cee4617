"""Packing a code directory: what goes in, what stays out, and the size limit."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from runyard.client import CodeTooLarge, pack_code
from runyard.client.errors import ClientError


def make_project(root: Path) -> Path:
    files = {
        "train.py": "print('hi')\n",
        "pkg/model.py": "X = 1\n",
        "pkg/__pycache__/model.cpython-311.pyc": "junk",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".venv/bin/python": "not really",
        "sub/.venv/lib/x.py": "nested venv",
        ".runyard/objects/runyard/code/old.tar.gz": "an earlier package",
        "data/.gitkeep": "",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names(package: Path) -> set[str]:
    with tarfile.open(package, "r:gz") as tar:
        return set(tar.getnames())


def test_packs_code_and_leaves_out_vcs_venvs_and_caches(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    package = pack_code(project, max_bytes=10_000_000, dest_dir=str(tmp_path))
    try:
        assert names(package) == {"train.py", "pkg", "pkg/model.py", "sub", "data", "data/.gitkeep"}
        with tarfile.open(package, "r:gz") as tar:
            member = tar.getmember("train.py")
            assert (member.uid, member.uname) == (0, "")
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == b"print('hi')\n"
    finally:
        package.unlink()


def test_same_code_packs_to_the_same_bytes(tmp_path: Path) -> None:
    """The server names packages by sha256: unchanged code is stored once."""
    project = make_project(tmp_path / "project")
    first = pack_code(project, 0, dest_dir=str(tmp_path))
    second = pack_code(project, 0, dest_dir=str(tmp_path))
    assert first != second
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_raw_size_over_the_limit_fails_before_packing(tmp_path: Path) -> None:
    project = tmp_path / "big"
    project.mkdir()
    (project / "weights.bin").write_bytes(b"\0" * 3 * 1024 * 1024)
    with pytest.raises(CodeTooLarge) as caught:
        pack_code(project, max_bytes=2 * 1024 * 1024, dest_dir=str(tmp_path))
    assert str(caught.value) == (
        f"code directory {project} is 3 MB, over the server's limit of 2 MB (set by --max-code-bytes)"
    )
    assert list(tmp_path.glob("runyard-code-*")) == []


def test_packed_size_over_the_limit_fails_and_leaves_no_file(tmp_path: Path) -> None:
    project = tmp_path / "many"
    project.mkdir()
    for i in range(20):  # incompressible and tiny: tar headers make the package bigger than the files
        (project / f"f{i}.bin").write_bytes(os.urandom(100))
    with pytest.raises(CodeTooLarge, match=r"over the server's limit of .* MB \(set by --max-code-bytes\)"):
        pack_code(project, max_bytes=2000, dest_dir=str(tmp_path))
    assert list(tmp_path.glob("runyard-code-*")) == []


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match=r"code directory .*nope does not exist"):
        pack_code(tmp_path / "nope", 0)


def test_symlinks_are_kept_as_links(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "real.py").write_text("x = 1\n")
    (project / "alias.py").symlink_to("real.py")
    package = pack_code(project, 0, dest_dir=str(tmp_path))
    with tarfile.open(package, "r:gz") as tar:
        link = tar.getmember("alias.py")
        assert link.issym() and link.linkname == "real.py"
