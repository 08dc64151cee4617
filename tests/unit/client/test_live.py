"""The live runs table: where each run stands, folded from a watch's updates."""

from __future__ import annotations

from rich.console import Console

from runyard.client.live import RunsBoard
from runyard.v1 import common_pb2, resources_pb2, watch_pb2

RS = common_pb2.RunState


def _status(run_id: str, state: int) -> watch_pb2.RunUpdate:
    update = watch_pb2.RunUpdate(run_id=run_id)
    update.status.state = state  # type: ignore[assignment]
    return update


def _points(run_id: str, step: int, **values: float) -> watch_pb2.RunUpdate:
    update = watch_pb2.RunUpdate(run_id=run_id)
    for name, value in values.items():
        update.metrics.points.add(name=name, step=step, value=value, source="stdout")
    return update


def _text(board: RunsBoard) -> str:
    console = Console(width=160, record=True)
    console.print(board.table())
    return console.export_text()


def test_the_board_follows_state_step_and_latest_metrics() -> None:
    board = RunsBoard([resources_pb2.Run(id="run-a", index=0), resources_pb2.Run(id="run-b", index=1)], "val_acc")
    queued = watch_pb2.RunUpdate(run_id="run-b")
    queued.queue.position, queued.queue.reason = 1, "waiting for a free slot"
    for update in (
        _status("run-a", RS.RUN_STATE_RUNNING), queued,
        _points("run-a", 1, loss=0.9, val_acc=0.5), _points("run-a", 2, loss=0.4, val_acc=0.8),
    ):  # fmt: skip
        board.apply(update)
    a, b = board.rows["run-a"], board.rows["run-b"]
    assert (a.state, a.step, a.metrics) == (RS.RUN_STATE_RUNNING, 2, {"loss": 0.4, "val_acc": 0.8})
    assert b.note == "#1: waiting for a free slot"
    assert board.metric_names() == ["val_acc", "loss"]  # the search metric first
    text = _text(board)
    assert "waiting for a free slot" in text and "0.8" in text
    board.apply(_status("run-b", RS.RUN_STATE_RUNNING))
    assert board.rows["run-b"].note == ""  # it left the queue


def test_a_run_the_board_has_not_seen_is_looked_up() -> None:
    asked: list[str] = []

    def describe(run_id: str) -> resources_pb2.Run:
        asked.append(run_id)
        return resources_pb2.Run(id=run_id, index=5)

    board = RunsBoard([], describe=describe)
    board.apply(_status("run-new", RS.RUN_STATE_RUNNING))
    board.apply(_points("run-new", 3, loss=0.2))
    assert asked == ["run-new"]
    assert (board.rows["run-new"].index, board.rows["run-new"].state) == (5, RS.RUN_STATE_RUNNING)
