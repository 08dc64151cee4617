"""What this agent holds, on disk: one small record per attempt, so a restarted agent finds its orphans.

A record is written when an attempt is accepted and rewritten with the process
group id of its command (and the group leader's start time, from
``/proc/<pid>/stat``) once the command is spawned; it is removed once the
attempt's terminal report is stored. A record left behind means the agent died
(``kill -9``, a crash, the host's OOM killer) while it held the attempt.

On start, before taking any work, the agent ends every such attempt
(`end_orphans`): the command's output pipes died with the old agent, so
nothing it prints can be captured any more and adopting it would be a lie; its
process group is sent SIGTERM, then SIGKILL after the grace, and the attempt is
reported failed (INTERNAL, so the control plane re-queues it while restarts
remain, at once instead of at the end of its lease).

The container runtime keeps its attempts across a restart instead: the record
holds the attempt's container id (written once the start is reported), a
``.work`` file beside it the WorkAssignment, and a ``.output`` ledger how far its
output was sent (`runyard.agent.output_ledger`); a restarted agent adopts the
container (`runyard.agent.main`) rather than ending it.

Pid reuse: a group is signalled only when it is provably ours. Either its
leader still runs with the recorded start time, or the leader is gone and the
group still has members: Linux never hands out a pid that is still in use as a
process group id, so those members are the command's own children.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf.message import DecodeError

from runyard.agent.output_ledger import OutputLedger
from runyard.v1.agent_pb2 import WorkAssignment

log = structlog.get_logger("runyard.agent.holdings")

STATE_FOLDER = ".attempts"
_NAME = re.compile(r"^(?P<run>[A-Za-z0-9_.-]+)~(?P<attempt>[0-9]+)\.json$")


@dataclass(frozen=True)
class HeldAttempt:
    run_id: str
    attempt: int
    #: The command's process group id; 0 before the command was spawned.
    pgid: int = 0
    #: The group leader's start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
    start_ticks: int = 0
    #: The attempt's container id (container runtime), once its start was reported; "" before, or for a process.
    container: str = ""


def start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks since boot), None when it does not exist (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_ours(held: HeldAttempt) -> bool:
    """May the recorded process group be signalled (see the module docstring on pid reuse)?"""
    if held.pgid <= 1:
        return False
    leader = start_ticks(held.pgid)
    if leader is not None:
        return leader == held.start_ticks
    return group_alive(held.pgid)


def end_groups(pgids: list[int], grace_s: float) -> None:
    """SIGTERM every group at once, SIGKILL whatever is left of them after grace_s."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + max(grace_s, 0.0)
    while time.monotonic() < deadline and any(group_alive(p) for p in pgids):
        time.sleep(0.05)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


class Holdings:
    """The records under WORK/.attempts/, one file per attempt, each written atomically."""

    def __init__(self, work_root: Path) -> None:
        self.folder = work_root / STATE_FOLDER

    def _path(self, run_id: str, attempt: int) -> Path:
        return self.folder / f"{run_id}~{attempt}.json"

    def record(self, held: HeldAttempt) -> None:
        path = self._path(held.run_id, held.attempt)
        tmp = path.with_suffix(".tmp")
        # Another attempt's `remove` may take the empty folder away between our mkdir and our write.
        for _ in range(100):
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                self.folder.mkdir(parents=True, exist_ok=True)
                record: dict[str, int | str] = {"pgid": held.pgid, "start_ticks": held.start_ticks}
                if held.container:
                    record["container"] = held.container
                tmp.write_text(json.dumps(record))
                os.replace(tmp, path)
                return
        raise OSError(f"could not record attempt {held.run_id}:{held.attempt} under {self.folder}")

    def ledger(self, run_id: str, attempt: int) -> OutputLedger:
        """Where the attempt's output capture records how far it got (see runyard.agent.output_ledger)."""
        return OutputLedger(self.folder / f"{run_id}~{attempt}.output")

    @property
    def _contact_path(self) -> Path:
        return self.folder / "contact"

    def note_contact(self, wall_time: float) -> None:
        """When (wall clock) the control plane last heard of every attempt held then (a heartbeat's PONG)."""
        path = self._contact_path
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):  # the folder went with the last attempt: nothing held
            tmp.write_text(repr(wall_time))
            os.replace(tmp, path)

    def last_contact(self) -> float:
        """The last `note_contact` time (0 when none): how long a restarted agent's attempts went unvouched."""
        try:
            return float(self._contact_path.read_text())
        except (OSError, ValueError):
            return 0.0

    def recorded_at(self, run_id: str, attempt: int) -> float:
        """When (wall clock) the attempt's record was last written (0 when there is none)."""
        try:
            return self._path(run_id, attempt).stat().st_mtime
        except OSError:
            return 0.0

    def _work_path(self, run_id: str, attempt: int) -> Path:
        return self.folder / f"{run_id}~{attempt}.work"

    def record_work(self, work: WorkAssignment) -> None:
        """The attempt's WorkAssignment, for a restarted agent that adopts its container."""
        path = self._work_path(work.run_id, work.attempt)
        tmp = path.with_suffix(".work-tmp")
        for _ in range(100):
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(work.SerializeToString())
                os.replace(tmp, path)
                return
        raise OSError(f"could not record the work of attempt {work.run_id}:{work.attempt} under {self.folder}")

    def load_work(self, run_id: str, attempt: int) -> WorkAssignment | None:
        try:
            return WorkAssignment.FromString(self._work_path(run_id, attempt).read_bytes())
        except (OSError, DecodeError) as e:
            log.warning("attempt's work record unreadable", run_id=run_id, attempt=attempt, error=repr(e))
            return None

    def remove(self, run_id: str, attempt: int) -> None:
        self.ledger(run_id, attempt).remove()
        with contextlib.suppress(FileNotFoundError):
            self._work_path(run_id, attempt).unlink()
        with contextlib.suppress(FileNotFoundError):
            self._path(run_id, attempt).unlink()
        if not any(self.folder.glob("*~*")):  # nothing held: the contact note goes too
            with contextlib.suppress(FileNotFoundError):
                self._contact_path.unlink()
        with contextlib.suppress(OSError):  # not empty: other attempts are held
            self.folder.rmdir()

    def load(self) -> list[HeldAttempt]:
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.iterdir()):
            m = _NAME.match(path.name)
            if m is None:
                continue
            try:
                data = json.loads(path.read_text())
                found.append(
                    HeldAttempt(
                        m["run"],
                        int(m["attempt"]),
                        int(data.get("pgid", 0)),
                        int(data.get("start_ticks", 0)),
                        str(data.get("container", "")),
                    )
                )
            except (OSError, ValueError, AttributeError) as e:
                log.warning(
                    "unreadable attempt record; treated as held without a process", path=str(path), error=repr(e)
                )
                found.append(HeldAttempt(m["run"], int(m["attempt"])))
        return found

    @staticmethod
    def end_orphans(held: list[HeldAttempt], grace_s: float) -> list[HeldAttempt]:
        """End the process groups of these attempts that are still ours and alive; returns those."""
        alive = [h for h in held if is_ours(h) and group_alive(h.pgid)]
        end_groups([h.pgid for h in alive], grace_s)
        return alive
