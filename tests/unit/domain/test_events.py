"""The log's vocabulary: payload types round-trip, names are stable, ids are deterministic."""

from __future__ import annotations

import re
import uuid

import pytest

from runyard.server.domain import events as ev
from runyard.server.domain.errors import UnknownEventType
from runyard.v1 import agent_pb2, common_pb2, events_pb2

ID = re.compile(r"[a-z2-7]{10}")


def test_every_payload_of_events_proto_is_registered() -> None:
    names = {f"runyard.v1.{name}" for name in events_pb2.DESCRIPTOR.message_types_by_name}
    assert set(ev.EVENT_TYPES) == names
    assert "runyard.v1.RunAssigned" in names


def test_encode_then_decode_gives_the_same_event() -> None:
    assigned = events_pb2.RunAssigned(attempt=2, agent_id="agent-1", gpu_ids=["0", "3"])
    type_, data = ev.encode(assigned)
    assert type_ == "runyard.v1.RunAssigned"
    assert ev.decode(type_, data) == assigned


def test_encoding_is_deterministic_for_maps() -> None:
    """Equal events give equal bytes, whatever order a map was filled in."""
    one = common_pb2.RunSpec(env={"A": "1", "B": "2", "C": "3"})
    two = common_pb2.RunSpec(env={"C": "3", "A": "1", "B": "2"})
    first = ev.encode(events_pb2.RunCreated(run_id="r", spec=one))
    second = ev.encode(events_pb2.RunCreated(run_id="r", spec=two))
    assert first == second


def test_unknown_types_are_refused_both_ways() -> None:
    with pytest.raises(UnknownEventType, match=r"runyard\.v1\.NoSuchEvent"):
        ev.decode("runyard.v1.NoSuchEvent", b"")
    with pytest.raises(UnknownEventType, match=r"runyard\.v1\.WorkAssignment"):
        ev.encode(agent_pb2.WorkAssignment(run_id="r"))


def test_stream_names() -> None:
    assert ev.experiment_stream("exp-1") == "experiment:exp-1"
    assert ev.run_stream("run-1") == "run:run-1"
    assert ev.run_logs_stream("run-1") == "run-logs:run-1"
    assert ev.run_metrics_stream("run-1") == "run-metrics:run-1"
    assert ev.agent_stream("gpu-host-3") == "agent:gpu-host-3"


def test_new_experiment_ids_are_fresh_and_well_formed() -> None:
    ids = {ev.new_experiment_id() for _ in range(200)}
    assert len(ids) == 200
    for ident in ids:
        assert ident.startswith("exp-") and ID.fullmatch(ident[4:])


def test_a_retried_create_maps_to_the_same_experiment() -> None:
    first = ev.experiment_id_for_request("acct-1", "req-42")
    assert first == ev.experiment_id_for_request("acct-1", "req-42")
    assert first.startswith("exp-") and ID.fullmatch(first[4:])
    assert first != ev.experiment_id_for_request("acct-2", "req-42"), "request ids are per account"
    assert ev.experiment_id_for_request("a", "bc") != ev.experiment_id_for_request("ab", "c")


def test_run_ids_are_derived_from_experiment_and_index() -> None:
    assert ev.run_id_for("exp-1", 0) == ev.run_id_for("exp-1", 0)
    ids = {ev.run_id_for("exp-1", i) for i in range(1000)} | {ev.run_id_for("exp-2", 0)}
    assert len(ids) == 1001
    for ident in ids:
        assert ident.startswith("run-") and ID.fullmatch(ident[4:])


def test_event_ids_for_the_same_parts_are_equal() -> None:
    one = ev.event_id_for("report", "agent-1", "e-9")
    assert isinstance(one, uuid.UUID)
    assert one == ev.event_id_for("report", "agent-1", "e-9")
    assert one != ev.event_id_for("report", "agent-1e-9")
