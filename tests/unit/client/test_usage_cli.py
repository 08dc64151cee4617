"""`runyard usage`: what it asks the UsageService for, and its table, JSON and CSV output."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime

import grpc
import pytest

from runyard.client import cli
from runyard.v1 import usage_service_pb2 as pb
from runyard.v1 import usage_service_pb2_grpc as pb_grpc


class FakeUsage(pb_grpc.UsageServiceServicer):
    """Canned usage; remembers the requests."""

    def __init__(self) -> None:
        self.requests: list[object] = []

    def GetUsage(self, request: pb.GetUsageRequest, context: grpc.ServicerContext) -> pb.GetUsageResponse:
        self.requests.append(request)
        return pb.GetUsageResponse(
            rows=[
                pb.UsageRow(
                    account_id="acme", period="2026-11-27", gpu_model="H100", gpu_seconds=0.1 + 0.2, attempts=2
                ),
                pb.UsageRow(account_id="acme", period="2026-11-28", gpu_model="", gpu_seconds=7200.000001, attempts=1),
            ],
            total_gpu_seconds=7200.300001,
        )

    def ListRunUsage(self, request: pb.ListRunUsageRequest, context: grpc.ServicerContext) -> pb.ListRunUsageResponse:
        self.requests.append(request)
        if request.page_token == "":
            first = pb.AttemptUsage(run_id="run-a", attempt=1, account_id="acme", gpus=2, gpu_seconds=10.5)
            first.started_at.FromDatetime(datetime(2026, 11, 27, 10, tzinfo=UTC))
            first.ended_at.FromDatetime(datetime(2026, 11, 27, 10, 0, 5, 250_000, tzinfo=UTC))
            return pb.ListRunUsageResponse(attempts=[first], next_page_token="next")
        second = pb.AttemptUsage(run_id="run-b", attempt=2, account_id="acme", gpus=1, gpu_seconds=3.0)
        second.started_at.FromDatetime(datetime(2026, 11, 28, tzinfo=UTC))
        return pb.ListRunUsageResponse(attempts=[second])


@pytest.fixture
def usage() -> Iterator[tuple[FakeUsage, str]]:
    fake = FakeUsage()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_UsageServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dates_are_whole_utc_days_and_to_includes_its_day(
    usage: tuple[FakeUsage, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, endpoint = usage
    argv = ["usage", "--endpoint", endpoint, "--account", "acme", "--from", "2026-11-01", "--to", "2026-11-30"]
    code, out, _ = run_cli(capsys, *argv, "--period", "month", "-o", "json")
    assert code == 0
    request = fake.requests[-1]
    assert isinstance(request, pb.GetUsageRequest)
    assert request.account_id == "acme" and request.period == pb.USAGE_PERIOD_MONTH
    assert getattr(request, "from").ToDatetime(UTC) == datetime(2026, 11, 1, tzinfo=UTC)
    assert request.to.ToDatetime(UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    reply = json.loads(out)
    assert reply["total_gpu_seconds"] == 7200.300001
    assert [r["gpu_seconds"] for r in reply["rows"]] == [0.1 + 0.2, 7200.000001]


def test_a_timestamp_is_an_exact_bound_and_no_bound_is_sent_when_none_is_given(
    usage: tuple[FakeUsage, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, endpoint = usage
    assert run_cli(capsys, "usage", "--endpoint", endpoint, "--to", "2026-11-27T12:30:00Z")[0] == 0
    request = fake.requests[-1]
    assert isinstance(request, pb.GetUsageRequest)
    assert not request.HasField("from") and request.period == pb.USAGE_PERIOD_DAY
    assert request.to.ToDatetime(UTC) == datetime(2026, 11, 27, 12, 30, tzinfo=UTC)


def test_csv_keeps_every_digit_and_table_shows_the_total(
    usage: tuple[FakeUsage, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, endpoint = usage
    code, out, _ = run_cli(capsys, "usage", "--endpoint", endpoint, "-o", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [float(r["gpu_seconds"]) for r in rows] == [0.1 + 0.2, 7200.000001]
    assert rows[0]["period"] == "2026-11-27" and rows[1]["attempts"] == "1"
    code, out, _ = run_cli(capsys, "usage", "--endpoint", endpoint)
    assert code == 0 and "2026-11-28" in out and "total" in out and "7,200.300 s" in out


def test_usage_runs_pages_through_every_attempt(
    usage: tuple[FakeUsage, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, endpoint = usage
    code, out, _ = run_cli(capsys, "usage", "runs", "--experiment", "exp-1", "--endpoint", endpoint, "-o", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["run_id"], r["ended_at"]) for r in rows] == [
        ("run-a", "2026-11-27T10:00:05.250000+00:00"),
        ("run-b", ""),
    ]
    assert [getattr(r, "experiment_id", None) for r in fake.requests] == ["exp-1", "exp-1"]
    code, out, _ = run_cli(capsys, "usage", "runs", "--endpoint", endpoint)
    assert code == 0 and "holding GPUs" in out


def test_bad_dates_are_one_line_errors(usage: tuple[FakeUsage, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, endpoint = usage
    code, _, err = run_cli(capsys, "usage", "--endpoint", endpoint, "--from", "27/11/2026")
    assert code == 1 and "--from" in err and "YYYY-MM-DD" in err
    code, _, err = run_cli(capsys, "usage", "--endpoint", endpoint, "--from", "2026-11-02", "--to", "2026-11-01")
    assert code == 1 and "--to" in err
