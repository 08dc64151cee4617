"""Metric extraction from stdout lines and runyard.log JSON lines."""

from __future__ import annotations

import json

from runyard.agent.metrics import (
    JsonlMetricParser,
    JsonlSplitter,
    StdoutMetricParser,
    compile_patterns,
)
from runyard.v1.common_pb2 import MetricPoint

DIGITS = r"epoch (?P<step>\d+) train_loss=(?P<train_loss>[0-9.]+) val_accuracy=(?P<val_accuracy>[0-9.]+)"


def as_tuples(points: list[MetricPoint]) -> list[tuple[str, int, float, str]]:
    return [(p.name, p.step, p.value, p.source) for p in points]


def test_named_groups_become_metrics_and_step_group_is_the_step() -> None:
    patterns, errors = compile_patterns([DIGITS])
    assert errors == []
    parser = StdoutMetricParser(patterns)
    points = parser.parse("epoch 3 train_loss=0.1234 val_accuracy=0.9511", time_us=42)
    assert as_tuples(points) == [
        ("train_loss", 3, 0.1234, "stdout"),
        ("val_accuracy", 3, 0.9511, "stdout"),
    ]
    assert all(p.time_us == 42 for p in points)


def test_lines_that_do_not_match_give_nothing() -> None:
    parser = StdoutMetricParser(compile_patterns([DIGITS])[0])
    assert parser.parse("loading data...", 0) == []


def test_without_a_step_group_each_metric_counts_its_own_points() -> None:
    patterns, _ = compile_patterns([r"loss: (?P<loss>[0-9.]+)", r"acc: (?P<acc>[0-9.]+)"])
    parser = StdoutMetricParser(patterns)
    steps = [p.step for line in ("loss: 1", "loss: 0.5", "acc: 0.9", "loss: 0.2") for p in parser.parse(line, 0)]
    assert steps == [0, 1, 0, 2]


def test_match_anywhere_in_the_line_and_several_patterns_per_line() -> None:
    patterns, _ = compile_patterns([r"loss=(?P<loss>[-0-9.e]+)", r"lr=(?P<lr>[-0-9.e]+)"])
    points = StdoutMetricParser(patterns).parse("[12:00] step done loss=1e-3 lr=3e-4", 0)
    assert as_tuples(points) == [("loss", 0, 0.001, "stdout"), ("lr", 0, 0.0003, "stdout")]


def test_values_that_are_not_finite_numbers_are_skipped() -> None:
    patterns, _ = compile_patterns([r"loss=(?P<loss>\S+)"])
    parser = StdoutMetricParser(patterns)
    assert parser.parse("loss=nan", 0) == []
    assert parser.parse("loss=inf", 0) == []
    assert parser.parse("loss=abc", 0) == []
    assert [p.step for p in parser.parse("loss=0.3", 0)] == [0]  # skipped values used no step


def test_bad_patterns_are_reported_not_fatal() -> None:
    patterns, errors = compile_patterns(["(unclosed", r"(?P<step>\d+)", r"ok=(?P<ok>\d)"])
    assert len(patterns) == 1
    assert "(unclosed" in errors[0]
    assert "no named group other than 'step'" in errors[1]


def test_jsonl_record_from_runyard_log() -> None:
    line = json.dumps({"step": 3, "time": 1700000000.5, "train_loss": 0.12, "val_accuracy": 0.95})
    points = JsonlMetricParser().parse(line, now_us=1)
    assert as_tuples(points) == [("train_loss", 3, 0.12, "jsonl"), ("val_accuracy", 3, 0.95, "jsonl")]
    assert {p.time_us for p in points} == {1_700_000_000_500_000}


def test_jsonl_skips_what_is_not_a_number_and_tolerates_junk() -> None:
    parser = JsonlMetricParser()
    assert parser.parse("not json", 0) == []
    assert parser.parse("[1, 2]", 0) == []
    assert parser.parse("", 0) == []
    points = parser.parse(json.dumps({"step": 1, "name": "x", "flag": True, "v": 2, "nan": float("nan")}), 7)
    assert as_tuples(points) == [("v", 1, 2.0, "jsonl")]
    assert points[0].time_us == 7  # no time field: the agent's clock


def test_jsonl_without_step_counts_per_metric() -> None:
    parser = JsonlMetricParser()
    steps = [p.step for _ in range(3) for p in parser.parse('{"loss": 1}', 0)]
    assert steps == [0, 1, 2]


def test_splitter_holds_back_a_partial_line_until_it_is_complete() -> None:
    splitter = JsonlSplitter()
    assert splitter.feed(b'{"a": 1}\n{"b"') == ['{"a": 1}']
    assert splitter.feed(b": 2}\n") == ['{"b": 2}']
    assert splitter.feed(b'{"c": 3}') == []
    assert splitter.rest() == ['{"c": 3}']
    assert splitter.rest() == []


def test_jsonl_names_with_nul_or_a_lone_surrogate_are_made_storable_and_numbers_fit() -> None:
    line = json.dumps({"step": 10**30, "lo\x00ss": 0.5, "acc\ud800": 10**400, "ok": 1, "time": 1e300})
    points = JsonlMetricParser().parse(line, now_us=1)
    assert [(p.name, p.step, p.value) for p in points] == [("lo\ufffdss", 2**63 - 1, 0.5), ("ok", 2**63 - 1, 1.0)]
    assert points[0].time_us == 2**63 - 1
    for p in points:
        p.SerializeToString()
