"""Storage belongs to accounts: a submit may name only the account's own storage, checked on decoded URIs.

A live stack (PostgreSQL, a private NATS, file storage, one agent). Accounts
alice and bob get their own bucket by default (s3://alice/, s3://bob/); the
refusals come back at submit, before any experiment or run exists.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from runyard.client.cli import main
from runyard.objectstore import ObjectStore, open_store
from runyard.v1 import admin_service_pb2, common_pb2, experiment_service_pb2
from tests.integration.api.helpers import code_of, details, wait_state
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

RS = common_pb2.RunState
A = admin_service_pb2
E = experiment_service_pb2

SECRET = b"bob's private data\n"


def manifest(results: str, data: str = "", command: str = "python -c \"print('ok')\"") -> str:
    text = f"""\
        name: storage-test
        framework: {{name: python}}
        command: {json.dumps(command)}
        results: {results}
        """
    if data:
        text += f"data: {data}\n"
    return textwrap.dedent(text)


@dataclass
class Tenants:
    stack: Stack
    admin: Stubs
    alice: Stubs
    bob: Stubs
    store: ObjectStore
    objects: Path


@pytest.fixture
def tenants(stack: Stack) -> Iterator[Tenants]:
    stack.start_server()
    stack.start_agent("agent-1", 2)
    assert stack.storage_root
    store = open_store(stack.storage_root, None)
    store.put_bytes("s3://bob/private/secret.txt", SECRET)
    store.put_bytes("s3://alice/inputs/numbers.txt", b"1 2 3\n")
    with stack.channel() as admin_channel:
        admin = Stubs(admin_channel)
        keys = {}
        for account in ("alice", "bob"):
            admin.admin.CreateAccount(A.CreateAccountRequest(account_id=account, gpu_quota=1), timeout=20)
            reply = admin.admin.CreateApiKey(A.CreateApiKeyRequest(account_id=account), timeout=20)
            keys[account] = reply.secret
        with stack.channel(keys["alice"]) as a, stack.channel(keys["bob"]) as b:
            yield Tenants(stack, admin, Stubs(a), Stubs(b), store, stack.root / "objects")


def submit(stubs: Stubs, manifest_yaml: str, code_uri: str = "") -> E.CreateExperimentResponse:
    return stubs.experiments.CreateExperiment(
        E.CreateExperimentRequest(manifest_yaml=manifest_yaml, code_uri=code_uri), timeout=30
    )


def refused(stubs: Stubs, manifest_yaml: str, code_uri: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        submit(stubs, manifest_yaml, code_uri)
    return err.value


def experiments_of(stubs: Stubs) -> list[Any]:
    return list(stubs.experiments.ListExperiments(E.ListExperimentsRequest(), timeout=10).experiments)


def upload(stubs: Stubs, data: bytes) -> str:
    reply = stubs.experiments.UploadCode(iter([E.UploadCodeRequest(chunk=data, total_bytes=len(data))]), timeout=30)
    return str(reply.code_uri)


def test_another_accounts_bucket_is_refused_in_data_and_in_results(tenants: Tenants) -> None:
    err = refused(tenants.alice, manifest("s3://alice/out", data="s3://bob/private"))
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
    assert details(err).startswith("data: s3://bob/private is outside the storage of account alice")
    assert "s3://alice/" in details(err)

    err = refused(tenants.alice, manifest("s3://bob/private"))
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
    assert details(err).startswith("results: ")
    # Another spelling of bob's bucket, and bob's bucket through its file:// path in the storage root.
    for uri in ("S3://BOB/private", (tenants.objects / "bob" / "private").as_uri()):
        err = refused(tenants.alice, manifest("s3://alice/out", data=uri))
        assert code_of(err) in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT), uri
        assert "data" in details(err)

    # Nothing was created, and bob's objects are as they were.
    assert experiments_of(tenants.alice) == []
    assert [i.uri for i in tenants.store.list("s3://bob/")] == ["s3://bob/private/secret.txt"]
    assert tenants.store.get_bytes("s3://bob/private/secret.txt") == SECRET


def test_host_files_and_the_servers_keys_file_are_refused_even_to_an_admin(tenants: Tenants) -> None:
    keys_file = tenants.stack.keys_file
    assert keys_file.exists()
    for stubs in (tenants.alice, tenants.admin):
        for uri in ("file:///etc/passwd", keys_file.as_uri(), keys_file.parent.as_uri() + "/"):
            err = refused(stubs, manifest("s3://alice/out", data=uri))
            assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED, uri
            # The keys' folder also holds the storage root: refused for that too.
            assert details(err).startswith(f"data: {uri} "), details(err)
            assert "is outside the storage of account" in details(err) or "holds the storage root" in details(err)
        err = refused(stubs, manifest((keys_file.parent / "out").as_uri()))
        assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
        assert details(err).startswith("results: ")
    assert experiments_of(tenants.admin) == []


def test_dot_segments_and_their_percent_encodings_cannot_climb_out(tenants: Tenants) -> None:
    root = tenants.objects.as_uri()
    tricks = [
        f"{root}/%2e%2e/keys.yaml",  # the storage root's parent: where `runyard up` keeps its keys
        f"{root}/alice/%2E%2E/bob/private",
        f"{root}/alice/%2e%2e%2fbob/private",
        f"{root}/alice/./../bob/private",
        "s3://alice/%2e%2e/bob/private",
        "s3://alice/inputs/%2e%2e/%2e%2e/bob",
        "s3://alice//inputs",
    ]
    for uri in tricks:
        err = refused(tenants.alice, manifest("s3://alice/out", data=uri))
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT, (uri, details(err))
        assert details(err).startswith(("data: ", "invalid manifest: data")), details(err)
    err = refused(tenants.alice, manifest("s3://alice/%2e%2e/bob/x"))
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT and "results" in details(err)
    assert experiments_of(tenants.alice) == []


def test_another_accounts_code_package_is_refused_and_ones_own_is_accepted(tenants: Tenants) -> None:
    code = b"not really a tar, never staged"
    bobs = upload(tenants.bob, code + b" (bob)")
    alices = upload(tenants.alice, code + b" (alice)")

    err = refused(tenants.alice, manifest("s3://alice/out"), code_uri=bobs)
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
    assert details(err).startswith(f"code_uri: {bobs} is not a code package of account alice")
    assert "/bob/" in bobs and "/alice/" in alices  # each account's packages in its own folder
    # A package under the code prefix but outside the caller's folder, existing or not, says the same.
    err = refused(tenants.alice, manifest("s3://alice/out"), code_uri="s3://runyard/code/abc.tar.gz")
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
    assert experiments_of(tenants.alice) == []

    created = submit(tenants.alice, manifest("s3://alice/out"), code_uri=alices).experiment
    assert created.code_uri == alices


def test_prefixes_an_admin_grants_work_and_stop_working_when_revoked(
    tenants: Tenants, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = tmp_path / "host-data"
    host.mkdir()
    (host / "numbers.txt").write_text("4 5 6\n")
    tenants.store.put_bytes("s3://shared/team-a/numbers.txt", b"7 8 9\n")
    monkeypatch.setenv("RUNYARD_ENDPOINT", tenants.stack.endpoint)
    monkeypatch.setenv("RUNYARD_API_KEY", tenants.stack.admin_key)

    # Before the grant: refused.
    shared = manifest("s3://shared/team-a/out", data="s3://shared/team-a")
    assert code_of(refused(tenants.alice, shared)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(refused(tenants.alice, manifest("s3://alice/out", data=host.as_uri()))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )

    # `runyard admin storage` grants, as an operator types it.
    capsys.readouterr()
    assert main(["admin", "storage", "alice", "--allow", "s3://shared/team-a", "--allow", host.as_uri()]) == 0
    out = capsys.readouterr().out
    assert "s3://shared/team-a/" in out and "s3://alice/" in out
    listed = tenants.admin.admin.ListAccounts(A.ListAccountsRequest(), timeout=10).accounts
    grants = {a.id: list(a.storage_prefixes) for a in listed}
    assert grants["alice"] == sorted(["s3://alice/", "s3://shared/team-a/", host.as_uri() + "/"])
    assert grants["bob"] == ["s3://bob/"]
    assert main(["admin", "accounts", "list"]) == 0
    assert "s3://shared/team-a/" in capsys.readouterr().out

    cat = "python -c \"import os; print(open(os.path.join(os.environ['DATA_DIR'], 'numbers.txt')).read())\""
    for data, results in (("s3://shared/team-a", "s3://shared/team-a/out"), (host.as_uri(), "s3://alice/out")):
        run = submit(tenants.alice, manifest(results, data=data, command=cat)).experiment.runs[0]
        done = wait_state(tenants.alice, run.id, {RS.RUN_STATE_COMPLETED, RS.RUN_STATE_FAILED})
        assert done.run.state == RS.RUN_STATE_COMPLETED, done.run
    # Segment boundaries: team-a does not grant team-ab.
    err = refused(tenants.alice, manifest("s3://shared/team-ab/out"))
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
    # Bob got nothing.
    assert code_of(refused(tenants.bob, shared)) == grpc.StatusCode.PERMISSION_DENIED

    # Revoked: refused again.
    assert main(["admin", "storage", "alice", "--revoke", "s3://shared/team-a/"]) == 0
    assert code_of(refused(tenants.alice, shared)) == grpc.StatusCode.PERMISSION_DENIED
    # A bad prefix names the field.
    with pytest.raises(grpc.RpcError) as err_info:
        tenants.admin.admin.SetAccountStorage(
            A.SetAccountStorageRequest(account_id="alice", allow=["s3://x/../y"]), timeout=10
        )
    assert code_of(err_info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err_info.value).startswith("allow: ")
    # A user may not grant itself anything.
    with pytest.raises(grpc.RpcError) as err_info:
        tenants.alice.admin.SetAccountStorage(
            A.SetAccountStorageRequest(account_id="alice", allow=["s3://bob/"]), timeout=10
        )
    assert code_of(err_info.value) == grpc.StatusCode.PERMISSION_DENIED
