"""Fuzzing every RPC of the API against a live server on PostgreSQL (issue 9).

Each RPC of every service in protos/runyard/v1/*_service.proto gets requests
built by hypothesis from its descriptor (any text, NUL, huge strings, integers
at the ends of their types, unknown enum values, timestamps out of range,
forged page tokens and cursors), with a user key and an admin key, then
undecodable request bytes; CreateExperiment also gets fuzzed manifests. Every
answer must be a status a caller can act on: never UNKNOWN or INTERNAL, never a
traceback or a Python exception's name, a message within gRPC's metadata
limit, and within a bounded time. Streams are subscriptions: they are read for
one message at most and only their refusals are judged. At the end the server
is still serving and its log holds no unhandled error.

RUNYARD_FUZZ_EXAMPLES sets the examples per RPC and key (default 25: the
whole file runs in about 20 seconds).
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runyard.server.api.auth import RULES
from runyard.v1 import (
    admin_service_pb2,
    common_pb2,
    experiment_service_pb2,
    run_service_pb2,
    usage_service_pb2,
)
from tests.integration.api.helpers import create, manifest
from tests.support.services import NatsServer, postgres_database
from tests.support.stack import Stack, Stubs
from tests.unit.domain.test_manifest_fuzz import MANIFEST

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("RUNYARD_FUZZ_EXAMPLES", "25"))
#: Seconds one unary call may take, however hostile the request.
BOUND_S = 10.0
FILES = (experiment_service_pb2, run_service_pb2, admin_service_pb2, usage_service_pb2)
METHODS: list[MethodDescriptor] = [
    method for f in FILES for service in f.DESCRIPTOR.services_by_name.values() for method in service.methods
]
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
#: What leaked internals look like: a traceback, Python's or a driver's exception names (not any word ending in Error:
#: messages quote the caller's own text).
PYTHON_ERROR = re.compile(
    r"Traceback|File \"/|psycopg|sqlalchemy|<class '"
    r"|\b(Overflow|Value|Type|Key|Attribute|Index|Unicode\w*|Decode|Data|Operational|Integrity|Programming"
    r"|Runtime|Assertion|Name|Lookup|ZeroDivision|Recursion|Memory)Error\b"
)


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def test_the_fuzzed_methods_are_every_rpc_of_the_api() -> None:
    assert {path_of(m) for m in METHODS} == set(RULES)


@dataclass
class Live:
    stack: Stack
    keys: dict[str, str]
    channel: grpc.Channel
    ids: list[str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    with postgres_database() as url:
        nats = NatsServer(root / "nats").start()
        stack = Stack(
            root=root,
            database_url=url,
            nats_url=nats.url,
            storage_root=(root / "objects").as_uri(),
            extra_env={"RUNYARD_STATE_DIR": str(root / "state"), "RUNYARD_CONFIG": str(root / "config.yaml")},
        )
        try:
            stack.start_server()
            stack.start_agent("agent-1", 2)
            with stack.channel() as admin_channel:
                stubs = Stubs(admin_channel)
                user = stubs.admin.CreateApiKey(
                    admin_service_pb2.CreateApiKeyRequest(account_id="default", role=common_pb2.ROLE_USER, name="fuzz")
                )
                # A key the fuzzer may revoke (never the keys it calls with).
                victim = stubs.admin.CreateApiKey(
                    admin_service_pb2.CreateApiKeyRequest(account_id="default", role=common_pb2.ROLE_USER, name="v")
                )
                exp = create(stubs, manifest("sleep 600", name="fuzz-target")).experiment
            ids = [exp.id, exp.runs[0].id, "default", "agent-1", victim.key.id]
            with grpc.insecure_channel(stack.endpoint) as channel:
                yield Live(stack, {"user": user.secret, "admin": stack.admin_key}, channel, ids)
            print("answers:", TALLY)
            assert_server_sound(stack)
        finally:
            stack.stop()
            nats.stop()


def assert_server_sound(stack: Stack) -> None:
    assert stack.servers[0].alive(), stack.logs()
    log = stack.servers[0].output()
    for marker in ("unhandled error in an RPC", "experiment driver step failed", "scheduling cycle failed"):
        assert marker not in log, f"the server logged {marker!r}:\n{log[-8000:]}"


# -- requests from descriptors ---------------------------------------------------------------


def interesting_text(ids: list[str]) -> st.SearchStrategy[str]:
    forged = [
        "p" + "9" * 30,
        "9" * 30,
        "9223372036854775808",
        "²",
        "-1",
        base64.urlsafe_b64encode(b"99999999999999999999999|run-x|1").decode(),
        base64.urlsafe_b64encode(b"0|run-x|99999999999999999999").decode(),
        base64.urlsafe_b64encode(b"0|a\x00b|1").decode(),
    ]
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from([*ids, *forged, "", "x\x00y", "\x00", "a" * 100_000, "é" * 5000, "s3://results/x"]),
    )


_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def scalar_strategy(field: FieldDescriptor, ids: list[str]) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return interesting_text(ids)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    low, high = _INTS[field.type]
    return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1]), st.integers(0, 5))


def message_strategy(descriptor: Descriptor, ids: list[str], depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if depth >= 2 or field.message_type.GetOptions().map_entry:
                continue
            one = message_strategy(field.message_type, ids, depth + 1)
        else:
            one = scalar_strategy(field, ids)
        repeated = field.is_repeated
        fields[field.name] = st.lists(one, max_size=4) if repeated else one

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(msg, name) if field.message_type is not None or isinstance(value, list) else None
            if isinstance(value, list):
                for item in value:
                    target.add().CopyFrom(item) if field.message_type is not None else target.append(item)  # type: ignore[union-attr]
            elif target is not None:
                target.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=fields).map(build)


# -- calling and judging ---------------------------------------------------------------------


def call(live: Live, method: MethodDescriptor, payloads: list[bytes], key: str) -> tuple[grpc.StatusCode, str]:
    """Send raw request bytes; the status code and message (OK and "" for a good answer)."""
    path = path_of(method)
    metadata = (("authorization", f"Bearer {key}"),)
    started = time.monotonic()
    try:
        if method.client_streaming:
            live.channel.stream_unary(path, None, None)(iter(payloads), timeout=BOUND_S, metadata=metadata)
        elif method.server_streaming:
            stream = live.channel.unary_stream(path, None, None)(payloads[0], timeout=BOUND_S, metadata=metadata)
            try:
                next(iter(stream), None)
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]
        else:
            live.channel.unary_unary(path, None, None)(payloads[0], timeout=BOUND_S, metadata=metadata)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED and method.server_streaming:
            return grpc.StatusCode.OK, ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
            return grpc.StatusCode.OK, ""  # a subscription with nothing new: open-ended by design
        judge(method, code, details, time.monotonic() - started)
        return code, details
    judge(method, grpc.StatusCode.OK, "", time.monotonic() - started)
    return grpc.StatusCode.OK, ""


TALLY: dict[str, int] = {}


def judge(method: MethodDescriptor, code: grpc.StatusCode, details: str, seconds: float) -> None:
    TALLY[code.name] = TALLY.get(code.name, 0) + 1
    where = f"{method.name} answered {code.name}: {details[:500]!r}"
    assert code not in BAD_CODES, where
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED and seconds < BOUND_S, f"{method.name} took {seconds:.1f}s"
    assert not PYTHON_ERROR.search(details), where
    assert len(details.encode()) <= 4096, f"{method.name}: a message of {len(details.encode())} bytes"


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.mark.parametrize("role", ["user", "admin"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_no_request_to_any_rpc_gets_an_unknown_or_internal_answer(
    live: Live, method: MethodDescriptor, role: str
) -> None:
    if method.name == "RebuildProjections" and role == "admin":
        # Each call replays the whole log: a few calls say as much as many.
        pass
    requests = message_strategy(method.input_type, live.ids)
    count = st.integers(0, 3) if method.client_streaming else st.just(1)

    @SETTINGS
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        n = data.draw(count)
        payloads = [data.draw(requests).SerializeToString() for _ in range(n)]
        call(live, method, payloads or [b""], live.keys[role])

    fuzz()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_undecodable_request_bytes_are_invalid_argument(live: Live, method: MethodDescriptor) -> None:
    strings = [f for f in method.input_type.fields if f.type == FieldDescriptor.TYPE_STRING]
    if strings:
        # A string field holding bytes that are not UTF-8.
        tag = bytes([(strings[0].number << 3) | 2])
        code, details = call(live, method, [tag + b"\x03\xff\xfe\xfd"], live.keys["admin"])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("request: cannot be decoded"), details

    @SETTINGS
    @given(raw=st.binary(max_size=200))
    def fuzz(raw: bytes) -> None:
        call(live, method, [raw], live.keys["user"])

    fuzz()


@SETTINGS
@given(doc=MANIFEST)
def test_fuzzed_manifests_never_get_an_unknown_or_internal_answer(live: Live, doc: dict[str, Any]) -> None:
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    request = experiment_service_pb2.CreateExperimentRequest(manifest_yaml=text)
    method = experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"].methods_by_name["CreateExperiment"]
    call(live, method, [request.SerializeToString()], live.keys["user"])
