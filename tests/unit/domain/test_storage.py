"""Storage URIs in canonical form, and what an account may touch: pure rules, checked with hypothesis."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runyard.server.domain.account import Account
from runyard.server.domain.storage import (
    BadStorageUri,
    StorageAccess,
    StorageDenied,
    canonical_prefix,
    canonical_prefixes,
)
from runyard.storage_uri import StorageUri, StorageUriError, parse_storage_uri
from runyard.v1 import events_pb2

# Path segments as people write them: letters, digits, a little punctuation, some non-ASCII.
SEGMENT = st.text(alphabet=st.sampled_from("abcxyz019-_.~ %+=,é中"), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
SEGMENTS = st.lists(SEGMENT, min_size=0, max_size=5)
BUCKET = st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True)
DOTS = st.sampled_from([".", "..", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2e."])


def s3(bucket: str, segments: list[str], encode: bool = False) -> str:
    path = "/".join(quote(s, safe="") if encode else s.replace("%", "%25") for s in segments)
    return f"s3://{bucket}/{path}"


@given(BUCKET, SEGMENTS, st.booleans())
def test_every_spelling_of_one_object_decodes_to_the_same_uri(bucket: str, segments: list[str], upper: bool) -> None:
    plain = parse_storage_uri(s3(bucket, segments))
    encoded = parse_storage_uri(s3(bucket.upper() if upper else bucket, segments, encode=True))
    assert plain == encoded == StorageUri("s3", bucket, tuple(segments))


@given(BUCKET, SEGMENTS)
def test_the_canonical_form_is_a_fixed_point(bucket: str, segments: list[str]) -> None:
    uri = parse_storage_uri(s3(bucket, segments, encode=True))
    assert parse_storage_uri(str(uri)) == uri
    assert parse_storage_uri(uri.as_prefix).segments == uri.segments


@given(BUCKET, SEGMENTS, DOTS, SEGMENTS, st.sampled_from(["s3", "file"]))
def test_no_spelling_of_a_dot_segment_is_ever_accepted(
    bucket: str, before: list[str], dots: str, after: list[str], scheme: str
) -> None:
    path = "/".join([*(quote(s, safe="") for s in before), dots, *(quote(s, safe="") for s in after)])
    uri = f"s3://{bucket}/{path}" if scheme == "s3" else f"file:///{path}"
    with pytest.raises(StorageUriError):
        parse_storage_uri(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://a//b",
        "s3://a/b%2fc",
        "s3://a/b%2Fc",
        "s3://a/b%5cc",
        "s3://a/b\\c",
        "s3://a/b%00c",
        "s3://a/%ff",
        "s3:///key",
        "s3://../key",
        "s3://a%2fb/key",
        "file://host/etc/passwd",
        "file:///etc/passwd?x",
        "file:///etc/passwd#x",
        "file:relative/path",
        "http://a/b",
        "a/b",
        "",
    ],
)
def test_uris_that_name_nothing_unambiguously_are_refused(uri: str) -> None:
    with pytest.raises(StorageUriError):
        parse_storage_uri(uri)


@given(BUCKET, SEGMENTS, SEGMENT, SEGMENTS)
def test_a_prefix_matches_on_whole_segments(bucket: str, base: list[str], last: str, rest: list[str]) -> None:
    prefix = parse_storage_uri(s3(bucket, [*base, last]))
    inside = parse_storage_uri(s3(bucket, [*base, last, *rest]))
    beside = parse_storage_uri(s3(bucket, [*base, last + "x", *rest]))
    other_bucket = parse_storage_uri(s3(bucket + "x", [*base, last, *rest]))
    assert inside.within(prefix)
    assert not beside.within(prefix)
    assert not other_bucket.within(prefix)
    as_file = parse_storage_uri("file:///" + "/".join(quote(s, safe="") for s in [bucket, *base, last, *rest]))
    assert not as_file.within(prefix)


def access(
    prefixes: tuple[str, ...] = ("s3://alice/",), root: tuple[str, ...] | None = ("srv", "objects")
) -> StorageAccess:
    return StorageAccess("alice", prefixes, "s3://runyard/code/", root)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://alice/digits",
        "s3://alice/",
        "s3://alice",
        "S3://ALICE/digits",
        "s3://alice/%64igits",
        "file:///srv/objects/alice/digits",
        "file://localhost/srv/objects/alice/digits",
    ],
)
def test_the_accounts_own_storage_is_allowed_however_spelled(uri: str) -> None:
    access().check_data("data", uri)


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("s3://bob/digits", StorageDenied),
        ("s3://alice-evil/x", StorageDenied),
        ("file:///srv/objects/bob/x", StorageDenied),
        ("file:///srv/objects", StorageDenied),
        ("file:///etc/passwd", StorageDenied),
        ("file:///srv/keys.yaml", StorageDenied),
        ("file:///srv/objects/%2e%2e/keys.yaml", BadStorageUri),
        ("s3://alice/../bob", BadStorageUri),
        ("s3://alice/%2e%2e/bob", BadStorageUri),
        ("s3://runyard/code/alice/x.tar.gz", StorageDenied),
    ],
)
def test_storage_outside_the_grants_is_refused_naming_the_field(uri: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"^data: "):
        access(("s3://alice/", "s3://runyard/")).check_data("data", uri)


def test_the_refusal_lists_the_allowed_prefixes() -> None:
    with pytest.raises(StorageDenied) as err:
        access(("s3://alice/", "s3://shared/a/")).check_data("results", "s3://bob/x")
    assert "allowed prefixes: s3://alice/, s3://shared/a/" in str(err.value)


def test_a_file_grant_allows_that_host_folder_only() -> None:
    granted = access(("s3://alice/", "file:///data/team/"))
    granted.check_data("data", "file:///data/team/digits")
    with pytest.raises(StorageDenied):
        granted.check_data("data", "file:///data/teamb")
    with pytest.raises(StorageDenied):
        access(root=None).check_data("data", "file:///srv/objects/alice/x")  # no storage root: a host path


def test_code_packages_are_the_accounts_own_or_inside_its_grants() -> None:
    a = access()
    a.check_code("code_uri", "s3://runyard/code/alice/abc.tar.gz")
    a.check_code("code_uri", "s3://alice/code/abc.tar.gz")
    for other in ("s3://runyard/code/bob/abc.tar.gz", "s3://runyard/code/abc.tar.gz", "s3://runyard/code/alicex/a"):
        with pytest.raises(StorageDenied, match=r"^code_uri: .* is not a code package of account alice"):
            a.check_code("code_uri", other)
    with pytest.raises(StorageDenied):
        a.check_code("code_uri", "s3://bob/abc.tar.gz")


def test_grants_are_stored_canonical_and_folder_like() -> None:
    assert canonical_prefix("allow", "S3://Shared/Team-A") == "s3://shared/Team-A/"
    assert canonical_prefix("allow", "file:///data/x/") == "file:///data/x/"
    assert canonical_prefixes("allow", ["s3://b/x", "s3://b/x/", "s3://a"]) == ("s3://a/", "s3://b/x/")
    for bad in ("file:///", "s3://b/../c", "http://x/", "s3://b/" + "x" * 2000):
        with pytest.raises(BadStorageUri, match=r"^allow: "):
            canonical_prefix("allow", bad)


def test_an_account_gets_its_own_bucket_unless_told_otherwise() -> None:
    (created,) = Account.create("acme")
    assert isinstance(created, events_pb2.AccountCreated)
    assert list(created.storage_prefixes) == ["s3://acme/"]
    (given_,) = Account.create("acme", storage_prefixes=["s3://Data/acme", "s3://results/acme/"])
    assert isinstance(given_, events_pb2.AccountCreated)
    assert list(given_.storage_prefixes) == ["s3://data/acme/", "s3://results/acme/"]
    # Accounts opened before grants existed recorded none: they get the default on replay.
    legacy = Account.replay([events_pb2.AccountCreated(account_id="old", name="old", gpu_quota=1)])
    assert legacy.storage_prefixes == ("s3://old/",)


def test_an_admin_grants_and_revokes_and_a_retry_records_nothing() -> None:
    account = Account.replay(Account.create("acme"))
    (granted,) = account.set_storage(allow=["s3://shared/a"])
    assert isinstance(granted, events_pb2.AccountStorageSet)
    assert list(granted.storage_prefixes) == ["s3://acme/", "s3://shared/a/"]
    account.apply(granted)
    assert account.version == 2
    assert account.storage_prefixes == ("s3://acme/", "s3://shared/a/")
    assert account.set_storage(allow=["s3://shared/a/"]) == []
    (revoked,) = account.set_storage(revoke=["s3://acme"])
    account.apply(revoked)
    assert list(account.storage_prefixes) == ["s3://shared/a/"]
    assert account.set_storage(revoke=["s3://acme/"]) == []
    with pytest.raises(BadStorageUri, match=r"^allow: "):
        account.set_storage(allow=["s3://x/%2e%2e/y"])


def test_an_s3_key_is_checked_as_written_too_since_s3_never_decodes_it() -> None:
    """`%74eam-a` decodes into team-a, but S3 stores the literal key `%74eam-a/x`, outside the grant."""
    shared = access(("s3://shared/team-a/",))
    shared.check_data("data", "s3://shared/team-a/x")
    with pytest.raises(StorageDenied):
        shared.check_data("data", "s3://shared/%74eam-a/x")
    access(("s3://shared/",)).check_data("data", "s3://shared/%74eam-a/x")


FILE_SEGMENT = st.text(alphabet=st.sampled_from("ab09-_ %?#é"), min_size=1, max_size=6)


@given(st.lists(FILE_SEGMENT, min_size=1, max_size=4))
def test_a_file_uri_spelled_canonically_parses_back_to_itself(segments: list[str]) -> None:
    uri = parse_storage_uri("file:///" + "/".join(quote(s, safe="") for s in segments))
    assert uri.segments == tuple(segments)
    assert parse_storage_uri(str(uri)) == uri


def test_a_file_path_in_the_storage_root_is_decoded_once_only() -> None:
    shared = access(("s3://shared/team-a/",))
    shared.check_data("data", "file:///srv/objects/shared/team-a/x")
    with pytest.raises(StorageDenied):  # the folder is literally '%74eam-a', not team-a
        shared.check_data("data", "file:///srv/objects/shared/%2574eam-a/x")


def test_a_file_grant_never_reaches_the_storage_root_from_above() -> None:
    granted = access(("s3://alice/", "file:///srv/"))
    granted.check_data("data", "file:///srv/datasets")
    for uri in ("file:///srv", "file:///srv/objects", "file:///srv/objects/"):
        with pytest.raises(StorageDenied, match="holds the storage root"):
            granted.check_data("data", uri)
    with pytest.raises(StorageDenied, match="outside the storage of account alice"):
        granted.check_data("data", "file:///srv/objects/bob/x")  # inside the root: bob's bucket


def test_an_own_code_package_is_checked_as_written_too() -> None:
    with pytest.raises(StorageDenied):
        access().check_code("code_uri", "s3://runyard/code/%61lice/abc.tar.gz")
