"""Small inputs, large costs, leaked internals (issue 9): one regression test per finding, on a live server."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from runyard.v1 import (
    experiment_service_pb2,
    run_service_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)
from tests.integration.api.helpers import code_of, create, details, manifest
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

#: What a default gRPC client accepts: 4 MiB per message, 8 KiB of metadata (the status message included).
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


def refusal(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def test_twenty_thousand_categorical_values_are_answered_in_a_moment(stubs: Stubs) -> None:
    # They took 83 s of server CPU (a quadratic duplicate check) and slowed every other submit tenfold.
    def body(count: int) -> str:
        values = json.dumps([f"v{i}" for i in range(count)])
        hps = f"hyperparameters:\n  x: {{type: categorical, values: {values}}}\n"
        return manifest("echo ${x}", extra=hps + "search: {method: random, max_runs: 2}\n")

    started = time.monotonic()
    err = refusal(create, stubs, body(20_000))
    assert details(err) == "invalid manifest: hyperparameters.x.values: has 20000 values; at most 10000 are allowed"
    assert create(stubs, body(10_000)).experiment.run_count == 2
    assert time.monotonic() - started < 10


def test_a_100_kb_id_is_refused_with_a_short_message(stubs: Stubs) -> None:
    # The NOT_FOUND echoed the id: a status message larger than gRPC's metadata limit, lost on the client.
    huge = "x" * 100_000
    err = refusal(stubs.experiments.GetExperiment, experiment_pb(huge), timeout=10)
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err) == "experiment_id: is 100000 characters long; at most 256"
    err = refusal(stubs.runs.GetRunLogs, run_service_pb2.GetRunLogsRequest(run_id="r" * 100_000), timeout=10)
    assert details(err).startswith("run_id: is 100000 characters long")


def experiment_pb(experiment_id: str) -> experiment_service_pb2.GetExperimentRequest:
    return experiment_service_pb2.GetExperimentRequest(experiment_id=experiment_id)


def test_long_error_messages_are_cut_to_fit_and_say_so(stubs: Stubs) -> None:
    # 1,500 repeated values: 1,500 field errors, each quoting a 300-character value.
    value = json.dumps("v" * 300)
    body = manifest(
        "echo ${x}", extra=f"hyperparameters:\n  x: [{', '.join([value] * 1500)}]\nsearch: {{method: grid}}\n"
    )
    err = refusal(create, stubs, body)
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    text = details(err)
    assert text.startswith("invalid manifest: hyperparameters.x[1]: repeats the value")
    assert len(text.encode()) <= 2100 and "(message cut:" in text


def test_list_pages_fit_a_default_client(stubs: Stubs, stack: Stack) -> None:
    # Two 3.5 MB manifests made ListExperiments answer more than a default client's 4 MiB.
    err = refusal(create, stubs, manifest("true", extra=f"description: {'d' * 3_500_000}\n"))
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err) == "manifest_yaml: is 3500102 characters long; at most 524288"
    for i in range(10):
        create(stubs, manifest("true", name=f"big-{i}", extra=f"description: {'d' * 500_000}\n"))
    seen: list[str] = []
    token = ""
    with grpc.insecure_channel(stack.endpoint) as plain:  # a default client: 4 MiB per message
        from runyard.client.auth import with_api_key
        from runyard.v1 import experiment_service_pb2_grpc

        experiments = experiment_service_pb2_grpc.ExperimentServiceStub(with_api_key(plain, stack.admin_key))
        while True:
            page = experiments.ListExperiments(
                experiment_service_pb2.ListExperimentsRequest(page_size=1000, page_token=token), timeout=30
            )
            assert page.ByteSize() < DEFAULT_MAX_MESSAGE
            seen += [e.name for e in page.experiments]
            token = page.next_page_token
            if not token:
                break
    assert sorted(seen) == sorted(f"big-{i}" for i in range(10))


@pytest.mark.parametrize(
    ("hyperparameter", "field"),
    [
        ("{type: int, min: -1000000000000000000000000000000, max: 5}", "hyperparameters.x.min"),
        ("{type: double, min: 0, max: 1" + "0" * 400 + "}", "hyperparameters.x.max"),
    ],
)
def test_huge_numbers_in_hyperparameter_bounds_are_invalid_argument(
    stubs: Stubs, hyperparameter: str, field: str
) -> None:
    # OverflowError came back as UNKNOWN, or the manifest was taken and its searcher failed on every pass.
    body = manifest(
        "echo ${x}", extra=f"hyperparameters:\n  x: {hyperparameter}\nsearch: {{method: random, max_runs: 2}}\n"
    )
    err = refusal(create, stubs, body)
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field}: must" in details(err)


def test_page_tokens_and_cursors_out_of_range_are_invalid_argument(stubs: Stubs, stack: Stack) -> None:
    huge = "9" * 25
    err = refusal(stubs.experiments.ListExperiments, experiment_service_pb2.ListExperimentsRequest(page_token=huge))
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT and details(err).startswith("page_token:")
    err = refusal(stubs.runs.ListRuns, run_service_pb2.ListRunsRequest(page_token="9223372036854775808"))
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT and details(err).startswith("page_token:")
    run_id = create(stubs, manifest("true")).experiment.runs[0].id
    err = refusal(lambda: list(stubs.runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run_id, cursor="p" + huge))))
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT and details(err).startswith("cursor:")
    with stack.channel() as channel:
        usage = usage_service_pb2_grpc.UsageServiceStub(channel)
        import base64

        forged = base64.urlsafe_b64encode(b"1|run-x|" + huge.encode()).decode()
        err = refusal(usage.ListRunUsage, usage_service_pb2.ListRunUsageRequest(page_token=forged))
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT and details(err).startswith("page_token:")


def test_usage_periods_out_of_range_are_invalid_argument(stack: Stack, stubs: Stubs) -> None:
    with stack.channel() as channel:
        usage = usage_service_pb2_grpc.UsageServiceStub(channel)
        request = usage_service_pb2.GetUsageRequest()
        getattr(request, "from").CopyFrom(Timestamp(seconds=2**62))
        err = refusal(usage.GetUsage, request)
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err).startswith("from: 4611686018427387904s 0ns is not a time between")
        request = usage_service_pb2.GetUsageRequest(to=Timestamp(seconds=1, nanos=-1))
        assert code_of(refusal(usage.GetUsage, request)) == grpc.StatusCode.INVALID_ARGUMENT


def test_text_the_backends_cannot_store_is_refused_naming_the_field(stubs: Stubs) -> None:
    # A manifest command holding NUL reached the log (and stopped every PostgreSQL projection).
    err = refusal(create, stubs, manifest("echo a\x00b"))
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert "command: must not contain the NUL character" in details(err)
    err = refusal(create, stubs, manifest("true"), "retry-\x00-1")
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err) == "client_request_id: must not contain the NUL character (\\0)"
    # Nothing stored: the next submit is served as ever.
    assert create(stubs, manifest("true")).experiment.run_count == 1


@pytest.mark.parametrize(
    "command",
    ["sh -c 'echo ${x}'", 'sh -c "echo ${x}"', "sh -c \"echo '${x}'\"", "echo `echo ${x}`", "cat <<E\n#${x}\nE"],
)
def test_a_placeholder_inside_quotes_is_refused_at_submit(stubs: Stubs, command: str) -> None:
    # With x = "1; touch /tmp/x" the run executed the touch.
    body = manifest(command, extra='hyperparameters:\n  x: {type: const, value: "1; touch /tmp/x"}\n')
    err = refusal(create, stubs, body)
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid manifest: command: ${x} is " in details(err) and "a value of x needs shell quoting" in details(err)


def test_an_experiment_whose_runs_outgrow_a_default_client_is_answered_in_part(stubs: Stubs, stack: Stack) -> None:
    # 100 runs of a 60 KB command: 6 MB with its runs, more than a default client accepts in one message.
    command = "echo ${x} " + "#" * 60_000
    body = manifest(command, extra="hyperparameters:\n  x: {type: int, min: 0, max: 99}\nsearch: {method: grid}\n")
    experiment_id = create(stubs, body).experiment.id
    from runyard.client.auth import with_api_key
    from runyard.v1 import experiment_service_pb2_grpc, run_service_pb2_grpc

    with grpc.insecure_channel(stack.endpoint) as plain:  # a default client: 4 MiB per message
        channel = with_api_key(plain, stack.admin_key)
        got = experiment_service_pb2_grpc.ExperimentServiceStub(channel).GetExperiment(
            experiment_pb(experiment_id), timeout=30
        )
        assert got.experiment.run_count == 100 and 0 < len(got.experiment.runs) < 100
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        seen: list[str] = []
        token = ""
        while True:
            page = runs.ListRuns(
                run_service_pb2.ListRunsRequest(experiment_id=experiment_id, page_size=1000, page_token=token),
                timeout=30,
            )
            seen += [r.id for r in page.runs]
            token = page.next_page_token
            if not token:
                break
        assert len(set(seen)) == 100
