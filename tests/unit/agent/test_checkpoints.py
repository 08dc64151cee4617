"""Checkpoint storage and restore on a file store: what is stored, and what a restore refuses."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from runyard.agent.checkpoints import CheckpointError, restore_checkpoint, scan, store_checkpoint
from runyard.objectstore import ObjectStore, open_store
from runyard.v1.common_pb2 import Checkpoint

RESULTS = "s3://results/run-1"


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store((tmp_path / "objects").as_uri(), None)


def write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def test_writes_in_progress_dot_names_and_links_are_not_part_of_a_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    write(folder, {"a.pt": "a", "d/b.pt": "b", ".hidden": "x", "c.tmp": "x", "e.partial": "x", ".git/x": "x"})
    os.symlink("/etc/passwd", folder / "link")
    os.symlink(tmp_path, folder / "dirlink")
    os.mkfifo(folder / "fifo")
    assert sorted(scan(folder)) == ["a.pt", "d/b.pt"]
    assert scan(tmp_path / "missing") == {}


def test_a_stored_checkpoint_restores_byte_for_byte(tmp_path: Path, store: ObjectStore) -> None:
    folder = tmp_path / "ck"
    write(folder, {"model.pt": "weights", "opt/state.pt": "momentum"})
    ck = store_checkpoint(store, RESULTS, "run-1", 2, 7, 120, folder, tmp_path / "scratch", list(scan(folder)))
    assert (ck.checkpoint_id, ck.files, ck.size_bytes, ck.step) == ("2-7", 2, 15, 120)
    assert ck.manifest_uri == f"{RESULTS}/checkpoints/2-7.json"
    assert not (tmp_path / "scratch").exists()
    dest = tmp_path / "restored"
    dest.mkdir()
    assert restore_checkpoint(store, ck, dest) == (2, 15)
    assert (dest / "opt" / "state.pt").read_text() == "momentum" and (dest / "model.pt").read_text() == "weights"
    assert sorted(p.name for p in dest.rglob("*")) == ["model.pt", "opt", "state.pt"]


@pytest.mark.parametrize("path", ["../outside", "/etc/cron.d/x", "a/../../b", "./x", "a//b", ""])
def test_a_manifest_naming_a_path_outside_the_folder_is_refused(tmp_path: Path, store: ObjectStore, path: str) -> None:
    body = json.dumps({"checkpoint_id": "1-1", "files": [{"path": path, "size": 1, "sha256": "0" * 64}]}).encode()
    uri = f"{RESULTS}/checkpoints/1-1.json"
    store.put_bytes(uri, body)
    ck = Checkpoint(checkpoint_id="1-1", manifest_uri=uri, manifest_sha256=hashlib.sha256(body).hexdigest())
    dest = tmp_path / "restored"
    dest.mkdir()
    with pytest.raises(CheckpointError, match="checkpoint 1-1"):
        restore_checkpoint(store, ck, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "outside").exists()
