"""Metrics from TensorBoard event files under RESULT_DIR: what torch and Keras write, read back while being written."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_masked_crc32c
from torch.utils.tensorboard import SummaryWriter

from runyard.agent.metrics import JsonlMetricParser, StdoutMetricParser, compile_patterns
from runyard.agent.tensorboard import (
    TensorBoardTail,
    masked_crc32c,
    metric_name,
    split_records,
    widen_float32,
)
from runyard.v1.common_pb2 import MetricPoint

Triple = tuple[str, int, float]


def triples(points: list[MetricPoint]) -> list[Triple]:
    return [(p.name, p.step, p.value) for p in points]


def event_file(folder: Path) -> Path:
    (found,) = [p for p in folder.iterdir() if ".tfevents." in p.name]
    return found


def tf2_scalar_event(tag: str, step: int, value: float, first: bool) -> event_pb2.Event:
    """A scalar as TF2's tf.summary.scalar writes it (Keras' callback): float32 bytes in tensor_content,
    the plugin named only in the tag's first summary."""
    summary_value = summary_pb2.Summary.Value(
        tag=tag,
        tensor=tensor_pb2.TensorProto(dtype=1, tensor_content=struct.pack("<f", value)),
    )
    if first:
        summary_value.metadata.plugin_data.plugin_name = "scalars"
    return event_pb2.Event(wall_time=1700000000.5, step=step, summary=summary_pb2.Summary(value=[summary_value]))


def test_masked_crc32c_agrees_with_tensorboards() -> None:
    rng = random.Random(0)
    for size in [0, 1, 7, 8, 100, 4096]:
        data = rng.randbytes(size)
        assert masked_crc32c(data) == reference_masked_crc32c(data)


def test_float32_values_read_back_as_the_decimal_that_was_written() -> None:
    for written in [0.95, 0.1234, 1e-3, 12.5, 3.0e38, -7.25e-9, 0.0]:
        as_float32 = struct.unpack("<f", struct.pack("<f", written))[0]
        assert widen_float32(as_float32) == written


def test_scalars_written_by_torch_are_read_with_step_value_and_time(tmp_path: Path) -> None:
    with SummaryWriter(log_dir=str(tmp_path / "tb")) as writer:
        for step in range(3):
            writer.add_scalar("train_loss", 1.0 / (step + 1), step, walltime=1700000000.0 + step)
            writer.add_scalar("val_accuracy", [0.5, 0.75, 0.95][step], step, new_style=True)
            writer.add_scalar("lr", 1e-3 / 3, step, double_precision=True, new_style=True)
    points = TensorBoardTail(tmp_path).poll()
    assert sorted(triples(points)) == sorted(
        [("train_loss", s, v) for s, v in [(0, 1.0), (1, 0.5), (2, 0.33333334)]]
        + [("val_accuracy", s, v) for s, v in [(0, 0.5), (1, 0.75), (2, 0.95)]]
        + [("lr", s, 1e-3 / 3) for s in range(3)]
    )
    assert {p.source for p in points} == {"tensorboard"}
    assert [p.time_us for p in points if p.name == "train_loss"] == [
        1700000000_000000 + s * 1_000_000 for s in range(3)
    ]


def test_keras_layout_gives_the_names_keras_uses(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for folder, values in [("train", [0.8, 0.9]), ("validation", [0.85, 0.93])]:
        with SummaryWriter(log_dir=str(logs / folder)) as writer:
            for epoch, value in enumerate(values):
                writer.file_writer.add_event(tf2_scalar_event("epoch_accuracy", epoch, value, first=epoch == 0))
                writer.file_writer.add_event(tf2_scalar_event("epoch_loss", epoch, 1 - value, first=epoch == 0))
            writer.add_scalar("batch_loss", 0.5, 7)
    got = sorted(triples(TensorBoardTail(tmp_path).poll()))
    assert got == sorted(
        [
            ("accuracy", 0, 0.8),
            ("accuracy", 1, 0.9),
            ("loss", 0, 0.2),
            ("loss", 1, 0.1),
            ("batch_loss", 7, 0.5),
            ("val_accuracy", 0, 0.85),
            ("val_accuracy", 1, 0.93),
            ("val_loss", 0, 0.15),
            ("val_loss", 1, 0.07),
            ("val_batch_loss", 7, 0.5),
        ]
    )


def test_names_follow_the_tag_wherever_the_file_lies() -> None:
    assert metric_name("", "val_accuracy") == "val_accuracy"
    assert metric_name("tb", "Loss/train") == "Loss/train"
    assert metric_name("train", "epoch_loss") == "loss"
    assert metric_name("validation", "epoch_accuracy") == "val_accuracy"
    assert metric_name("loss_train", "loss") == "loss/train"
    assert metric_name("Loss_a_val", "Loss/a") == "Loss/a/val"
    assert metric_name("loss_", "loss") == "loss"


def test_add_scalars_series_get_names_of_their_own(tmp_path: Path) -> None:
    with SummaryWriter(log_dir=str(tmp_path / "runs")) as writer:
        writer.add_scalars("loss", {"train": 0.5, "val": 0.75}, 1)
        writer.flush()
        for sub in writer.all_writers.values():
            sub.flush()
    assert sorted(triples(TensorBoardTail(tmp_path).poll())) == [("loss/train", 1, 0.5), ("loss/val", 1, 0.75)]


def test_histograms_text_and_other_summaries_are_not_metrics(tmp_path: Path) -> None:
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        writer.add_histogram("weights", numpy.array([0.1, 0.2, 0.3]), 0)
        writer.add_text("notes", "hello", 0)
        writer.add_scalar("loss", 0.25, 0)
        writer.file_writer.add_event(
            event_pb2.Event(
                step=1,
                summary=summary_pb2.Summary(
                    value=[
                        summary_pb2.Summary.Value(
                            tag="vector",
                            tensor=tensor_pb2.TensorProto(
                                dtype=1, float_val=[1.0, 2.0], tensor_shape={"dim": [{"size": 2}]}
                            ),
                        )
                    ]
                ),
            )
        )
    assert triples(TensorBoardTail(tmp_path).poll()) == [("loss", 0, 0.25)]


def test_a_tail_returns_each_point_once_as_the_file_grows(tmp_path: Path) -> None:
    tail = TensorBoardTail(tmp_path)
    assert tail.poll() == []
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    try:
        writer.add_scalar("loss", 1.0, 0)
        writer.flush()
        assert triples(tail.poll()) == [("loss", 0, 1.0)]
        assert tail.poll() == []
        writer.add_scalar("loss", 0.5, 1)
        writer.add_scalar("loss", 0.25, 2)
        writer.flush()
        assert triples(tail.poll()) == [("loss", 1, 0.5), ("loss", 2, 0.25)]
    finally:
        writer.close()
    assert tail.poll() == []


def written_file(tmp_path: Path, count: int) -> bytes:
    source = tmp_path / "source"
    with SummaryWriter(log_dir=str(source)) as writer:
        for step in range(count):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
    return event_file(source).read_bytes()


def test_a_partial_record_is_not_read_until_it_is_complete(tmp_path: Path) -> None:
    data = written_file(tmp_path, 4)
    everything = triples(TensorBoardTail(tmp_path / "source").poll())
    assert len(everything) == 4
    for cut in range(len(data) + 1):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        target = folder / "events.out.tfevents.1.host.1.0"
        target.write_bytes(data[:cut])
        tail = TensorBoardTail(folder)
        before = triples(tail.poll())
        assert before == everything[: len(before)]  # only whole records, in order
        assert tail.problems == []
        with target.open("ab") as f:
            f.write(data[cut:])
        assert before + triples(tail.poll()) == everything


def test_a_record_bigger_than_a_polls_worth_is_still_read(tmp_path: Path) -> None:
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        writer.add_text("notes", "x" * 50_000, 0)
        writer.add_scalar("loss", 0.5, 1)
    tail = TensorBoardTail(tmp_path, poll_bytes=1024)
    assert triples(tail.drain()) == [("loss", 1, 0.5)]


def test_a_corrupt_record_is_skipped_once_it_is_surely_not_a_write_in_progress(tmp_path: Path) -> None:
    data = bytearray(written_file(tmp_path, 3))
    frames = split_records(bytes(data))
    assert frames.bad is None
    # The second scalar record (after the file_version record and the first scalar): flip a data byte.
    first, second = len(frames.records[0]) + 16, len(frames.records[1]) + 16
    data[first + second + 14] ^= 0xFF
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "events.out.tfevents.1.host.1.0").write_bytes(bytes(data))
    tail = TensorBoardTail(folder)
    assert triples(tail.poll()) == [("loss", 0, 1.0)]
    assert tail.problems == []
    assert triples(tail.poll()) == [("loss", 2, 0.33333334)]
    assert len(tail.problems) == 1 and "corrupt record" in tail.problems[0]


THREE_SOURCES = textwrap.dedent(
    """
    import os, sys
    import runyard
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=os.path.join(os.environ["RESULT_DIR"], "tb"))
    for epoch in range(5):
        train_loss = round(1.0 / (epoch + 1), 4)
        val_accuracy = round(0.5 + 0.09 * epoch, 4)
        print(f"epoch {epoch} train_loss={train_loss} val_accuracy={val_accuracy}", flush=True)
        runyard.log(step=epoch, train_loss=train_loss, val_accuracy=val_accuracy)
        writer.add_scalar("train_loss", train_loss, epoch)
        writer.add_scalar("val_accuracy", val_accuracy, epoch)
    writer.close()
    """
)


def test_the_three_sources_deliver_identical_points(tmp_path: Path) -> None:
    """One script reports the same values by printing, by runyard.log and to TensorBoard."""
    results, metrics_file = tmp_path / "results", tmp_path / "metrics.jsonl"
    results.mkdir()
    env = {**os.environ, "RESULT_DIR": str(results), "RUNYARD_METRICS_FILE": str(metrics_file)}
    done = subprocess.run(
        [sys.executable, "-c", THREE_SOURCES], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    pattern = r"epoch (?P<step>\d+) train_loss=(?P<train_loss>[0-9.]+) val_accuracy=(?P<val_accuracy>[0-9.]+)"
    stdout = StdoutMetricParser(compile_patterns([pattern])[0])
    jsonl = JsonlMetricParser()
    from_stdout = [p for line in done.stdout.splitlines() for p in stdout.parse(line, 0)]
    from_jsonl = [p for line in metrics_file.read_text().splitlines() for p in jsonl.parse(line, 0)]
    from_tensorboard = TensorBoardTail(results).drain()
    assert len(from_stdout) == 10
    assert sorted(triples(from_stdout)) == sorted(triples(from_jsonl)) == sorted(triples(from_tensorboard))
    assert json.loads(metrics_file.read_text().splitlines()[-1])["val_accuracy"] == 0.86


@pytest.mark.parametrize("new_style", [False, True])
def test_many_points_read_back_exactly(tmp_path: Path, new_style: bool) -> None:
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for step in range(2000):
            writer.add_scalar("loss", round(1.0 / (step + 1), 6), step, new_style=new_style)
    got = TensorBoardTail(tmp_path).drain()
    assert triples(got) == [("loss", step, round(1.0 / (step + 1), 6)) for step in range(2000)]
