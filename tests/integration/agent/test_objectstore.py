"""runyard.objectstore against the two places objects live: a storage-root folder and S3 (moto)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runyard.objectstore import ObjectInfo, ObjectStore, ObjectStoreError, open_store
from tests.support.services import AWS_TEST_ENV, MotoS3, free_port

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Bucket:
    """A store and a fresh bucket in it (moto keeps buckets across servers in one process)."""

    store: ObjectStore
    name: str

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}" if key else f"s3://{self.name}"


@pytest.fixture(params=["storage_root", "s3"])
def bkt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bucket]:
    """The same API over a storage root and over S3."""
    if request.param == "storage_root":
        store = open_store((tmp_path / "objects").as_uri(), None)
    else:
        moto: MotoS3 = request.getfixturevalue("moto_s3")
        store = open_store(None, moto.endpoint_url)
    name = f"bkt-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(name)
    yield Bucket(store, name)


def test_bytes_round_trip_and_exists(bkt: Bucket) -> None:
    bkt.store.put_bytes(bkt.uri("a/b.txt"), b"hello")
    assert bkt.store.get_bytes(bkt.uri("a/b.txt")) == b"hello"
    assert bkt.store.exists(bkt.uri("a/b.txt"))
    assert not bkt.store.exists(bkt.uri("a/missing.txt"))


def test_prefixes_are_folders(bkt: Bucket) -> None:
    bkt.store.put_bytes(bkt.uri("digits/train.npz"), b"1234")
    bkt.store.put_bytes(bkt.uri("digits/sub/val.npz"), b"12")
    bkt.store.put_bytes(bkt.uri("digits2/other.npz"), b"x")
    expected = [ObjectInfo(bkt.uri("digits/sub/val.npz"), 2), ObjectInfo(bkt.uri("digits/train.npz"), 4)]
    assert bkt.store.list(bkt.uri("digits")) == expected
    assert bkt.store.list(bkt.uri("digits/")) == expected
    assert len(bkt.store.list(bkt.uri())) == 3
    assert bkt.store.list(bkt.uri("nothing-here")) == []


def test_dir_upload_and_prefix_download_keep_the_tree(bkt: Bucket, tmp_path: Path) -> None:
    src = tmp_path / "result"
    (src / "ckpt").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"m" * 1000)
    (src / "ckpt" / "epoch1.pt").write_bytes(b"c" * 10)
    moved: list[int] = []
    assert bkt.store.upload_dir(src, bkt.uri("results/run-1"), progress=moved.append) == 2
    assert sum(moved) == 1010
    dest = tmp_path / "down"
    moved.clear()
    assert bkt.store.download_prefix(bkt.uri("results/run-1/"), dest, progress=moved.append) == 2
    assert sum(moved) == 1010
    assert (dest / "model.pt").read_bytes() == b"m" * 1000
    assert (dest / "ckpt" / "epoch1.pt").read_bytes() == b"c" * 10


def test_large_file_uses_managed_transfer_with_progress(bkt: Bucket, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = os.urandom(9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    big.write_bytes(data)
    moved: list[int] = []
    bkt.store.upload_file(big, bkt.uri("big.bin"), progress=moved.append)
    assert sum(moved) == len(data)
    moved.clear()
    bkt.store.download_file(bkt.uri("big.bin"), tmp_path / "back.bin", progress=moved.append)
    assert sum(moved) == len(data)
    assert (tmp_path / "back.bin").read_bytes() == data


def test_missing_key_and_bucket_name_the_uri(bkt: Bucket, tmp_path: Path) -> None:
    missing = re.escape(f"no object at {bkt.uri('nope.txt')}")
    with pytest.raises(ObjectStoreError, match=missing):
        bkt.store.get_bytes(bkt.uri("nope.txt"))
    with pytest.raises(ObjectStoreError, match=missing):
        bkt.store.download_file(bkt.uri("nope.txt"), tmp_path / "x")
    with pytest.raises(ObjectStoreError, match=r"bucket 'no-such-bucket' does not exist.*s3://no-such-bucket/k"):
        bkt.store.get_bytes("s3://no-such-bucket/k")
    with pytest.raises(ObjectStoreError, match=r"bucket 'no-such-bucket' does not exist"):
        bkt.store.list("s3://no-such-bucket/prefix")


def test_bad_uris_are_refused(bkt: Bucket) -> None:
    with pytest.raises(ObjectStoreError, match=r"unsupported URI \(scheme 'gs'\)"):
        bkt.store.get_bytes("gs://b/k")
    with pytest.raises(ObjectStoreError, match="no scheme"):
        bkt.store.get_bytes("/tmp/x")
    with pytest.raises(ObjectStoreError, match="no bucket name"):
        bkt.store.get_bytes("s3:///k")
    with pytest.raises(ObjectStoreError, match="names a folder"):
        bkt.store.put_bytes(bkt.uri("dir/"), b"x")


def test_storage_root_maps_buckets_to_folders_and_creates_them_on_write(tmp_path: Path) -> None:
    store = open_store((tmp_path / "objects").as_uri(), None)
    store.put_bytes("s3://datasets/digits/digits.npz", b"npz")
    assert (tmp_path / "objects" / "datasets" / "digits" / "digits.npz").read_bytes() == b"npz"
    with pytest.raises(ObjectStoreError, match="escape"):
        store.put_bytes("s3://datasets/../../etc/passwd", b"x")


def test_file_uris_are_the_local_filesystem_whatever_the_backend(tmp_path: Path) -> None:
    store = open_store(None, "http://127.0.0.1:1")  # S3 configured but never touched
    target = tmp_path / "local" / "f.txt"
    store.put_bytes(target.as_uri(), b"local")
    assert target.read_bytes() == b"local"
    assert store.list((tmp_path / "local").as_uri()) == [ObjectInfo(target.as_uri(), 5)]
    assert store.download_prefix((tmp_path / "local").as_uri(), tmp_path / "copy") == 1
    assert (tmp_path / "copy" / "f.txt").read_bytes() == b"local"
    with pytest.raises(ObjectStoreError, match="absolute path"):
        store.get_bytes("file:relative/path")


def test_unreachable_endpoint_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_store(None, endpoint)
    with pytest.raises(ObjectStoreError, match=f"cannot reach object storage at {endpoint}.*s3://bkt/k"):
        store.get_bytes("s3://bkt/k")


def test_s3_missing_bucket_on_upload(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = open_store(None, moto_s3.endpoint_url)
    f = tmp_path / "x.txt"
    f.write_text("x")
    bucket = f"missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ObjectStoreError, match=f"bucket '{bucket}' does not exist"):
        store.upload_file(f, f"s3://{bucket}/x.txt")


def test_an_upload_that_does_not_follow_links_skips_them_and_refuses_a_swapped_file(
    bkt: Bucket, tmp_path: Path
) -> None:
    """What the agent uses for $RESULT_DIR: a link's target is never read, also when a file becomes one late."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"host secret")
    src = tmp_path / "result"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"m")
    (src / "leak.txt").symlink_to(secret)
    (src / "sub" / "leak-dir").symlink_to(tmp_path)
    skipped: list[Path] = []
    count = bkt.store.upload_dir(src, bkt.uri("results/run-1"), follow_symlinks=False, skipped=skipped.append)
    assert count == 1
    assert sorted(p.relative_to(src).as_posix() for p in skipped) == ["leak.txt", "sub/leak-dir"]
    assert [i.uri for i in bkt.store.list(bkt.uri("results/run-1"))] == [bkt.uri("results/run-1/model.pt")]
    # A regular file swapped for a link after the walk: opened with O_NOFOLLOW, refused.
    with pytest.raises(ObjectStoreError, match="links are not uploaded"):
        bkt.store._upload_no_follow(src / "leak.txt", bkt.uri("results/run-1/leak.txt"))
    assert not bkt.store.exists(bkt.uri("results/run-1/leak.txt"))
    # A user's own folder (`runyard data upload`) still follows links, as before.
    assert bkt.store.upload_dir(src, bkt.uri("data/x")) == 2
