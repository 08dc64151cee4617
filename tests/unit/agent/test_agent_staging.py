"""Safe extraction of code archives, read-only data, work-folder cleanup, run environment."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest
from google.protobuf.struct_pb2 import ListValue, Value

from runyard.agent.env import build_run_env, hp_env_name
from runyard.agent.runtime_local import describe_exit
from runyard.agent.staging import (
    RunDirs,
    StagingError,
    UnsafeArchiveError,
    make_read_only,
    prune_work_dirs,
    remove_tree,
    safe_extract,
    stage_data,
)
from runyard.objectstore import open_store
from runyard.v1.agent_pb2 import WorkAssignment
from runyard.v1.common_pb2 import RunSpec


def archive(tmp_path: Path, *members: tarfile.TarInfo, files: dict[str, bytes] | None = None) -> Path:
    path = tmp_path / "code.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    return info


def test_extracts_a_normal_code_folder(tmp_path: Path) -> None:
    path = archive(
        tmp_path,
        member("pkg", tarfile.DIRTYPE),
        member("pkg/link.py", tarfile.SYMTYPE, linkname="../train.py"),
        files={"train.py": b"print(1)", "pkg/mod.py": b"x = 1"},
    )
    n = safe_extract(path, tmp_path / "code")
    assert n == 2
    assert (tmp_path / "code" / "train.py").read_bytes() == b"print(1)"
    assert (tmp_path / "code" / "pkg" / "link.py").read_bytes() == b"print(1)"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (member("../evil.py", size=1), "outside the code folder"),
        (member("a/../../evil.py", size=1), "outside the code folder"),
        (member("/etc/cron.d/evil", size=1), "absolute path"),
        (member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), "absolute path"),
        (member("a/link", tarfile.SYMTYPE, linkname="../../secret"), "links outside"),
        (member("hard", tarfile.LNKTYPE, linkname="../outside"), "hard-links outside"),
        (member("dev", tarfile.CHRTYPE), "device"),
        (member("fifo", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_refuses_archives_that_escape_the_code_folder(tmp_path: Path, bad: tarfile.TarInfo, words: str) -> None:
    path = archive(tmp_path, bad, files={"train.py": b"ok"})
    with pytest.raises(UnsafeArchiveError, match=words):
        safe_extract(path, tmp_path / "code")
    # Nothing was written: checks run before extraction.
    assert not (tmp_path / "code").exists()
    assert not (tmp_path / "evil.py").exists()


def test_a_file_that_is_not_an_archive_is_a_staging_error(tmp_path: Path) -> None:
    path = tmp_path / "code.tar.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(StagingError, match=r"not a readable tar\.gz"):
        safe_extract(path, tmp_path / "code")


def test_data_is_read_only_and_the_work_folder_still_removable(tmp_path: Path) -> None:
    dirs = RunDirs.under(tmp_path / "work", "run-1", 2)
    dirs.create()
    (dirs.data / "sub").mkdir()
    (dirs.data / "sub" / "x.npz").write_bytes(b"1")
    make_read_only(dirs.data)
    assert stat.S_IMODE(os.stat(dirs.data).st_mode) == 0o555
    assert stat.S_IMODE(os.stat(dirs.data / "sub").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(dirs.data / "sub" / "x.npz").st_mode) == 0o444
    assert dirs.root == tmp_path / "work" / "run-1" / "2"
    assert dirs.metrics_file.exists() and dirs.code.is_dir() and dirs.result.is_dir()
    remove_tree(dirs.root)
    assert not dirs.root.exists()


def test_run_ids_that_cannot_name_a_folder_are_refused(tmp_path: Path) -> None:
    for bad in ("..", "a/b", ""):
        with pytest.raises(StagingError):
            RunDirs.under(tmp_path, bad, 1)


def test_prune_keeps_the_newest_failed_folders_and_active_ones(tmp_path: Path) -> None:
    work = tmp_path / "work"
    paths = []
    for i in range(5):
        d = RunDirs.under(work, f"run-{i}", 1)
        d.create()
        make_read_only(d.data)
        t = time.time() - 100 + i
        os.utime(d.root, (t, t))
        paths.append(d.root)
    removed = prune_work_dirs(work, keep=2, active={paths[0]})
    assert sorted(removed) == sorted(paths[1:3])
    assert [p.exists() for p in paths] == [True, False, False, True, True]
    assert not (work / "run-1").exists()  # the emptied run folder goes too


def test_run_environment() -> None:
    spec = RunSpec(
        command="python train.py",
        env={"MY_FLAG": "1", "DATA_DIR": "/elsewhere", "PATH": "/custom/bin"},
        hyperparameters={
            "lr": Value(number_value=0.003),
            "hidden": Value(number_value=128),
            "optimizer": Value(string_value="adam"),
            "layers": Value(list_value=ListValue(values=[Value(number_value=2), Value(number_value=3)])),
            "use-bn": Value(bool_value=True),
        },
    )
    work = WorkAssignment(run_id="r1", attempt=2, experiment_id="e1", spec=spec, gpu_ids=["0", "3"])
    dirs = RunDirs.under(Path("/w"), "r1", 2)
    env = build_run_env(work, dirs, "/opt/torch/bin/python")
    assert env["HOME"] == "/w/r1/2/home" and env["TMPDIR"] == "/w/r1/2/tmp" and env["MY_FLAG"] == "1"
    assert env["DATA_DIR"] == "/w/r1/2/data"  # Runyard's own variables win over the manifest's
    assert env["RESULT_DIR"] == "/w/r1/2/result"
    assert env["RUNYARD_METRICS_FILE"] == "/w/r1/2/output/metrics.jsonl"
    assert (env["RUNYARD_RUN_ID"], env["RUNYARD_ATTEMPT"], env["RUNYARD_EXPERIMENT_ID"]) == ("r1", "2", "e1")
    assert env["CUDA_VISIBLE_DEVICES"] == "0,3"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == "/opt/torch/bin:/custom/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert json.loads(env["RUNYARD_HPARAMS"]) == {
        "lr": 0.003,
        "hidden": 128,
        "optimizer": "adam",
        "layers": [2, 3],
        "use-bn": True,
    }
    assert env["RUNYARD_HP_HIDDEN"] == "128"  # not "128.0"
    assert env["RUNYARD_HP_LR"] == "0.003"
    assert env["RUNYARD_HP_OPTIMIZER"] == "adam"
    assert env["RUNYARD_HP_LAYERS"] == "[2, 3]"
    assert env[hp_env_name("use-bn")] == "true" and hp_env_name("use-bn") == "RUNYARD_HP_USE_BN"


def test_no_gpus_means_an_empty_cuda_visible_devices() -> None:
    work = WorkAssignment(run_id="r", attempt=1, spec=RunSpec(command="true"))
    env = build_run_env(work, RunDirs.under(Path("/w"), "r", 1), "/usr/bin/python3")
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_exit_status_words() -> None:
    assert describe_exit(0) == (0, "exit status 0")
    assert describe_exit(3) == (3, "exit status 3")
    assert describe_exit(-9) == (137, "killed by signal SIGKILL")
    assert describe_exit(-15) == (143, "killed by signal SIGTERM")


def test_data_staging_takes_a_prefix_or_one_object_and_refuses_nothing(tmp_path: Path) -> None:
    store = open_store((tmp_path / "objects").as_uri(), None)
    store.put_bytes("s3://datasets/digits/digits.npz", b"npz")
    store.put_bytes("s3://datasets/digits/extra/labels.txt", b"0 1")

    as_prefix = tmp_path / "a"
    assert stage_data(store, "s3://datasets/digits", as_prefix) == (2, 6)
    assert (as_prefix / "extra" / "labels.txt").read_bytes() == b"0 1"

    one = tmp_path / "b"
    assert stage_data(store, "s3://datasets/digits/digits.npz", one) == (1, 3)
    assert (one / "digits.npz").read_bytes() == b"npz"

    with pytest.raises(StagingError, match="s3://datasets/digts: no objects under that prefix"):
        stage_data(store, "s3://datasets/digts", tmp_path / "c")
    with pytest.raises(StagingError, match="bucket 'nope' does not exist"):
        stage_data(store, "s3://nope/x", tmp_path / "d")
