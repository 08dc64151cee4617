"""The holdings records a restarted agent reads: containers, kept work, the last contact."""

from __future__ import annotations

from pathlib import Path

from runyard.agent.capture import OutputOffsets
from runyard.agent.holdings import HeldAttempt, Holdings
from runyard.v1.agent_pb2 import WorkAssignment
from runyard.v1.common_pb2 import RunSpec


def test_a_container_attempt_is_recorded_with_its_container_work_and_ledger(tmp_path: Path) -> None:
    holdings = Holdings(tmp_path)
    work = WorkAssignment(run_id="run-a", attempt=2, lease_seconds=60, spec=RunSpec(command="python3 train.py"))
    holdings.record(HeldAttempt("run-a", 2))
    holdings.record_work(work)
    holdings.record(HeldAttempt("run-a", 2, container="c0ffee"))
    holdings.ledger("run-a", 2).save(OutputOffsets(stdout_lines=3))
    holdings.note_contact(1234.5)

    restarted = Holdings(tmp_path)
    assert restarted.load() == [HeldAttempt("run-a", 2, container="c0ffee")]
    assert restarted.load_work("run-a", 2) == work
    assert restarted.ledger("run-a", 2).load() == OutputOffsets(stdout_lines=3)
    assert restarted.last_contact() == 1234.5
    assert restarted.recorded_at("run-a", 2) > 0

    restarted.remove("run-a", 2)  # the end was reported: nothing of it is left, the contact note neither
    assert not holdings.folder.exists()
    assert restarted.load() == [] and restarted.load_work("run-a", 2) is None and restarted.last_contact() == 0.0


def test_a_process_attempts_record_reads_as_before(tmp_path: Path) -> None:
    holdings = Holdings(tmp_path)
    holdings.record(HeldAttempt("run-b", 1, pgid=4242, start_ticks=99))
    assert Holdings(tmp_path).load() == [HeldAttempt("run-b", 1, 4242, 99)]
