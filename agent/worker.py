"""One attempt's lifecycle on this agent, from RunStaging to its terminal report.

STAGING (framework check, code + data down) -> RUNNING (the command) ->
UPLOADING (exit 0 only) -> COMPLETED; or AttemptFailed with the reason, or
RunCanceled. Every terminal report is sent only after all of the attempt's
log lines and metric points are stored, so a watcher that sees the end has
seen everything before it.

A cancel is honoured while staging (once the transfer in flight ends: a
boto3 transfer cannot be interrupted halfway) and while running. Once the
command has exited 0 the upload goes on and the attempt completes: the
results exist, and storing them is what the user paid for.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from runyard.agent.archive_limits import MAX_EXTRACTED_BYTES, MAX_EXTRACTED_FILES, ExtractionBudget
from runyard.agent.capture import Capture
from runyard.agent.checkpoints import DEFAULT_INTERVAL_S, CheckpointUploader, restore_checkpoint
from runyard.agent.env import build_run_env, resumed
from runyard.agent.holdings import HeldAttempt, Holdings, start_ticks
from runyard.agent.metrics import StdoutMetricParser, compile_patterns
from runyard.agent.output_ledger import OutputLedger
from runyard.agent.reporter import AttemptReports, Reporter
from runyard.agent.runtime_container import (
    ContainerError,
    ContainerProcess,
    ContainerRuntime,
)
from runyard.agent.runtime_local import LocalProcess, describe_exit, spawn
from runyard.agent.sandbox import INSIDE, Bwrap
from runyard.agent.staging import (
    RunDirs,
    StagingError,
    remove_tree,
    stage_code,
    stage_data,
    upload_attempt_output,
    upload_results,
)
from runyard.objectstore import ObjectStore, ObjectStoreError
from runyard.server.domain.units import format_bytes
from runyard.v1.agent_pb2 import WorkAssignment
from runyard.v1.common_pb2 import FailureReason, RunNetwork

log = structlog.get_logger("runyard.agent.worker")

SHUTDOWN_MESSAGE = "agent shutting down"
# An attempt's lease when its WorkAssignment names none (a control plane from before leases).
DEFAULT_LEASE_S = 60.0

USER_CODE = FailureReason.FAILURE_REASON_USER_CODE
STAGING_ERROR = FailureReason.FAILURE_REASON_STAGING_ERROR
UPLOAD_ERROR = FailureReason.FAILURE_REASON_UPLOAD_ERROR
UNSUPPORTED = FailureReason.FAILURE_REASON_UNSUPPORTED
INTERNAL = FailureReason.FAILURE_REASON_INTERNAL
OUT_OF_MEMORY = FailureReason.FAILURE_REASON_OUT_OF_MEMORY
AGENT_SHUTDOWN = FailureReason.FAILURE_REASON_AGENT_SHUTDOWN


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    #: The agent stopped and left the attempt's container running, for its next start to adopt.
    DETACHED = "detached"


@dataclass(frozen=True)
class WorkerContext:
    """What every attempt on this agent shares."""

    agent_id: str
    store: ObjectStore
    reporter: Reporter
    work_root: Path
    # Framework name -> Python interpreter.
    frameworks: Mapping[str, str]
    cancel_grace_s: float
    # What one code archive may expand to: (bytes, files and folders).
    code_limits: tuple[int, int] = (MAX_EXTRACTED_BYTES, MAX_EXTRACTED_FILES)
    # Where the attempts this agent holds are recorded for a restarted agent; None: nowhere.
    holdings: Holdings | None = None
    # The container runtime (`runyard agent --runtime container`); None: each command is a local process.
    containers: ContainerRuntime | None = None
    # The sandbox every command runs in (runyard.agent.sandbox); None: none.
    sandbox: Bwrap | None = None
    # Seconds between checkpoints of $CHECKPOINT_DIR while the command runs (runyard.agent.checkpoints).
    checkpoint_interval_s: float = DEFAULT_INTERVAL_S


class AttemptWorker:
    """Runs one WorkAssignment; `cancel` and `shutdown` may be called at any time."""

    def __init__(self, ctx: WorkerContext, work: WorkAssignment) -> None:
        self.ctx = ctx
        self.work = work
        self.key = (work.run_id, work.attempt)
        self.dirs = RunDirs.under(ctx.work_root, work.run_id, work.attempt)
        self.reports: AttemptReports = ctx.reporter.for_attempt(work.run_id, work.attempt)
        self._cancel = asyncio.Event()
        self._cancel_grace_s = ctx.cancel_grace_s
        self._stopping = asyncio.Event()
        self._stop_message = SHUTDOWN_MESSAGE
        self._stop_reason: FailureReason.ValueType = AGENT_SHUTDOWN
        self._stop_grace_s = ctx.cancel_grace_s
        self.process: LocalProcess | ContainerProcess | None = None
        #: The attempt's lease (see runyard.agent.main): half of it without contact and the agent stops it.
        self.lease_s = float(work.lease_seconds) if work.lease_seconds else DEFAULT_LEASE_S
        #: When (monotonic) the control plane last heard that we hold the attempt: its dispatch, then
        #: every heartbeat listing it that reached NATS. Set by the agent.
        self.vouched_at = time.monotonic()
        self._log = log.bind(run_id=work.run_id, attempt=work.attempt)
        self._detaching = asyncio.Event()
        #: A container a previous agent process started for this attempt, followed again (`adopt`).
        self.adopted: ContainerProcess | None = None
        #: The attempt's checkpoints, from the command's start on.
        self.checkpoints: CheckpointUploader | None = None
        #: The restored checkpoint: (files, bytes, seconds), set by `_stage`.
        self._restored: tuple[int, int, float] | None = None

    def adopt(self, proc: ContainerProcess) -> None:
        """Take over a running (or ended, not yet reported) container of a previous agent process.

        `run` then skips staging and the start: it follows the container's output
        files from where the ledger says the previous process got to, and reports
        the attempt's end as usual, once.
        """
        self.adopted = proc

    def detach(self) -> None:
        """The agent is stopping: leave a container attempt running for the next agent process to adopt.

        The output read so far is sent (and recorded); no terminal report, the
        container, its folder and the holdings records stay. An attempt that is
        not in its container yet (staging) is ended as by `shutdown`.
        """
        self._detaching.set()
        if not isinstance(self.process, ContainerProcess):
            self.shutdown()

    def cancel(self, grace_s: float | None = None) -> None:
        if grace_s is not None:
            self._cancel_grace_s = grace_s
        self._cancel.set()

    @property
    def self_stop_after_s(self) -> float:
        """Without contact for this long, the attempt is stopped by the agent itself."""
        return self.lease_s / 2

    @property
    def kill_grace_s(self) -> float:
        """SIGTERM to SIGKILL when the attempt is ended for its lease (or its agent died): within a quarter lease."""
        return min(self.ctx.cancel_grace_s, self.lease_s / 4)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def shutdown(
        self,
        message: str = SHUTDOWN_MESSAGE,
        grace_s: float | None = None,
        reason: FailureReason.ValueType = AGENT_SHUTDOWN,
    ) -> None:
        """End the attempt as an infrastructure failure: AGENT_SHUTDOWN (the agent is stopping: the
        control plane re-queues it, uncharged) or another reason (re-queued while restarts remain)."""
        if not self._stopping.is_set():
            self._stop_message = message
            self._stop_reason = reason
            if grace_s is not None:
                self._stop_grace_s = grace_s
        self._stopping.set()

    async def run(self) -> Outcome:
        """The whole attempt; never raises except CancelledError."""
        if self.adopted is not None:
            return await self._attempt(None)
        # The staging report goes out while the staging starts: it takes the attempt's report lock
        # first, so it is still the first report, and it is awaited before the command starts.
        staging = asyncio.create_task(self.reports.staging())
        try:
            return await self._attempt(staging)
        finally:
            if not staging.done():
                staging.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await staging

    async def _attempt(self, staging: asyncio.Task[None] | None) -> Outcome:
        patterns, pattern_errors = compile_patterns(p.regex for p in self.work.spec.metric_patterns)
        # Output followed from files (attach_files) is recorded batch by batch, for a restarted agent.
        ledger = self.ctx.holdings.ledger(*self.key) if self.ctx.holdings is not None else None
        capture = Capture(
            self.reports,
            StdoutMetricParser(patterns),
            self.dirs.metrics_file,
            tensorboard_dir=self.dirs.result,
            ledger=ledger,
        )
        capture.start()
        if staging is None and self.adopted is not None:
            capture.write_transcript(self.dirs.transcript)
            return await self._guarded(capture, self._resume(capture, self.adopted, ledger))
        for text in pattern_errors:
            capture.agent_line(text)
        assert staging is not None
        return await self._guarded(capture, self._run(capture, staging))

    async def _guarded(self, capture: Capture, attempt: Awaitable[Outcome]) -> Outcome:
        """The attempt's course; an error inside the agent ends it FAILED (INTERNAL), never silently."""
        try:
            return await attempt
        except asyncio.CancelledError:
            if self.process is not None and not self._detaching.is_set():
                self.process.kill_group()
            raise
        except Exception as e:
            self._log.exception("attempt failed inside the agent")
            if self.process is not None:
                self.process.kill_group()
            return await self._end(capture, Outcome.FAILED, INTERNAL, f"agent error: {e!r}")

    async def _end(
        self,
        capture: Capture,
        outcome: Outcome,
        reason: FailureReason.ValueType = FailureReason.FAILURE_REASON_UNSPECIFIED,
        message: str = "",
        exit_code: int = 0,
    ) -> Outcome:
        """The last checkpoint and the attempt's files, flush everything the run said, then the one terminal report."""
        if message:
            capture.agent_line(message)
        if self.checkpoints is not None:
            await self.checkpoints.finish()
        await self._upload_attempt(capture, outcome)
        try:
            await capture.close()
        except Exception as e:
            self._log.error("could not send the last run output", error=repr(e))
        if outcome is Outcome.CANCELED:
            await self.reports.canceled(message)
        elif outcome is Outcome.FAILED:
            await self.reports.failed(reason, message, exit_code)
        else:
            await self.reports.completed(self.work.spec.results_uri)
        self._log.info("attempt ended", outcome=outcome.value, reason=FailureReason.Name(reason), exit_code=exit_code)
        return outcome

    async def _upload_attempt(self, capture: Capture, outcome: Outcome) -> None:
        """<results_uri>/attempts/<n>/: the result folder of an attempt that did not complete, and every
        attempt's output.log. Best effort: an error is a line in the log, never another outcome."""
        results_uri = self.work.spec.results_uri
        capture.close_transcript()
        if not results_uri or not self.dirs.root.is_dir():
            return
        with_results = outcome is not Outcome.COMPLETED
        try:
            files = await asyncio.to_thread(
                upload_attempt_output, self.ctx.store, self.dirs, results_uri, self.work.attempt, with_results
            )
        except Exception as e:  # best effort, whatever went wrong
            capture.agent_line(f"attempt {self.work.attempt}'s files not uploaded: {e}")
            return
        if with_results and files:
            where = f"{results_uri.rstrip('/')}/attempts/{self.work.attempt}/"
            capture.agent_line(f"uploaded {files} result files of attempt {self.work.attempt} to {where}")

    def _checkpoint_uploader(self, capture: Capture) -> CheckpointUploader:
        return CheckpointUploader(
            self.ctx.store,
            self.reports,
            run_id=self.work.run_id,
            attempt=self.work.attempt,
            results_uri=self.work.spec.results_uri,
            folder=self.dirs.checkpoint,
            scratch=self.dirs.root / "checkpoint-upload",
            step=lambda: capture.max_step,
            agent_line=capture.agent_line,
            resumed_step=self.work.resume_from.step if resumed(self.work) else 0,
        )

    def _python(self) -> str | None:
        return self.ctx.frameworks.get(self.work.spec.framework.name or "python")

    async def _run(self, capture: Capture, staging: asyncio.Task[None]) -> Outcome:
        spec = self.work.spec
        python = self._python()
        if python is None and self.ctx.containers is None:
            offered = ", ".join(sorted(self.ctx.frameworks))
            asked = spec.framework.name + (f" {spec.framework.version}" if spec.framework.version else "")
            msg = f"agent {self.ctx.agent_id} offers frameworks [{offered}]; run asks for {asked}"
            return await self._end(capture, Outcome.FAILED, UNSUPPORTED, msg)

        started = time.monotonic()
        try:
            code_files, data_files, data_bytes = await asyncio.to_thread(self._stage)
        except StagingError as e:
            if self.dirs.root.is_dir():
                capture.write_transcript(self.dirs.transcript)
            return await self._end(capture, Outcome.FAILED, STAGING_ERROR, str(e))
        took = time.monotonic() - started
        capture.write_transcript(self.dirs.transcript)
        capture.agent_line(
            f"staged {code_files} code files from {spec.code_uri or '(none)'} and {data_files} data files "
            f"({format_bytes(data_bytes)}) from {spec.data_uri or '(none)'} in {took:.2f}s"
        )
        if self._restored is not None:
            files, size, restore_s = self._restored
            capture.agent_line(
                f"resumed from checkpoint {self.work.resume_from.checkpoint_id} "
                f"(step {self.work.resume_from.step}, {files} files, {format_bytes(size)}) in {restore_s:.2f}s"
            )
        checkpoints = self._checkpoint_uploader(capture)
        await checkpoints.prime()
        if self._cancel.is_set():
            return await self._end(capture, Outcome.CANCELED, message="canceled before the command started")
        if self._stopping.is_set():
            return await self._end(capture, Outcome.FAILED, self._stop_reason, self._stop_message)

        await staging  # a report that can never be stored (NATS closed for good) ends the attempt here
        if self._stopping.is_set():
            return await self._end(capture, Outcome.FAILED, self._stop_reason, self._stop_message)
        if self.ctx.containers is not None:
            return await self._run_container(capture, self.ctx.containers, checkpoints)
        assert python is not None
        sandbox = self.ctx.sandbox
        # Under bwrap the run sees its folders at the container runtime's paths: its variables name those.
        env = build_run_env(self.work, INSIDE if sandbox is not None else self.dirs, python)
        sandbox_argv = None
        if sandbox is not None:
            egress = spec.network == RunNetwork.RUN_NETWORK_EGRESS
            sandbox_argv = sandbox.argv(spec.command, self.dirs, python, network=egress)
        self.process = proc = await spawn(spec.command, self.dirs.code, env, self.kill_grace_s, sandbox_argv)
        if self.ctx.holdings is not None:
            held = HeldAttempt(self.key[0], self.key[1], proc.pid, start_ticks(proc.pid) or 0)
            await asyncio.to_thread(self.ctx.holdings.record, held)
        await self.reports.started()
        capture.attach(proc.stdout, proc.stderr)
        self._start_checkpoints(checkpoints)
        self._log.info("command started", pid=proc.pid)

        returncode, stopped_by = await self._wait(proc)
        await capture.drain()
        return await self._finish(capture, returncode, stopped_by)

    def _start_checkpoints(self, checkpoints: CheckpointUploader) -> None:
        """The command runs: periodic checkpoints from now on, and a last one in `_end`."""
        self.checkpoints = checkpoints
        checkpoints.start(self.ctx.checkpoint_interval_s)

    async def _run_container(
        self, capture: Capture, runtime: ContainerRuntime, checkpoints: CheckpointUploader
    ) -> Outcome:
        """The command in a fresh container (runyard.agent.runtime_container); its output through files."""
        started = time.monotonic()
        try:
            self.process = proc = await runtime.start(self.work, self.dirs)
        except ContainerError as e:
            return await self._end(capture, Outcome.FAILED, UNSUPPORTED, str(e))
        took = time.monotonic() - started
        try:
            await self.reports.started()
            if self.ctx.holdings is not None:  # from now on a restarted agent adopts the container
                held = HeldAttempt(self.key[0], self.key[1], container=proc.id)
                await asyncio.to_thread(self.ctx.holdings.record, held)
        except BaseException:
            await asyncio.to_thread(proc.remove)
            raise
        capture.attach_files(proc.stdout_path, proc.stderr_path)
        self._start_checkpoints(checkpoints)
        self._log.info("container started", container=proc.name, start_s=round(took, 3))
        return await self._follow_container(capture, proc)

    async def _resume(self, capture: Capture, proc: ContainerProcess, ledger: OutputLedger | None) -> Outcome:
        """An adopted container: its output from where the previous agent process got to, then its end."""
        self.process = proc
        saved = await asyncio.to_thread(ledger.load) if ledger is not None else None
        capture.attach_files(proc.stdout_path, proc.stderr_path, saved)
        self._start_checkpoints(self._checkpoint_uploader(capture))
        self._log.info("container adopted", container=proc.name, resumed_from=saved is not None)
        return await self._follow_container(capture, proc)

    async def _follow_container(self, capture: Capture, proc: ContainerProcess) -> Outcome:
        """Until the container ends (or the agent detaches); then the terminal report, then the container goes.

        The container is removed only after the terminal report: an agent killed
        on the way (during the upload, say) adopts the ended container next time
        and reports the end then; the control plane stores one end per attempt.
        """
        returncode, stopped_by = await self._wait(proc)
        if stopped_by == "detach":
            if self.checkpoints is not None:  # the next agent process takes them on
                await self.checkpoints.stop()
            await capture.detach()
            self._log.info("left running for the next agent process", container=proc.name)
            return Outcome.DETACHED
        keep = False
        try:
            ended = proc.exit
            await capture.drain()
            memory = self.work.spec.resources.memory_bytes
            if ended is not None and ended.oom_killed and not stopped_by:
                limit = f"more than resources.memory {format_bytes(memory)}" if memory else "more than the host had"
                msg = f"the command used {limit} and the kernel killed it"
                return await self._end(capture, Outcome.FAILED, OUT_OF_MEMORY, msg, ended.exit_code)
            return await self._finish(capture, returncode, stopped_by)
        except asyncio.CancelledError:
            # A stopping agent gave up waiting for the end's reports (NATS gone?): the next one reports it.
            keep = self._detaching.is_set()
            raise
        finally:
            # After the terminal report (the ended container holds nothing a next run needs), but
            # before the slot is free.
            if not keep:
                await asyncio.to_thread(proc.remove)

    async def _finish(self, capture: Capture, returncode: int, stopped_by: str) -> Outcome:
        """The command has ended: the terminal report, after the upload when it exited 0."""
        spec = self.work.spec
        exit_code, how = describe_exit(returncode)
        if stopped_by == "cancel":
            return await self._end(capture, Outcome.CANCELED, message=f"canceled on request; command {how}")
        if stopped_by == "shutdown":
            return await self._end(capture, Outcome.FAILED, self._stop_reason, self._stop_message, exit_code)
        if returncode != 0:
            msg = f"command failed with {how}"
            if capture.last_stderr:
                msg += f"; last stderr line: {capture.last_stderr}"
            return await self._end(capture, Outcome.FAILED, USER_CODE, msg, exit_code)

        # The line goes out with the upload's own line, in the last batch before RunCompleted (or
        # with the next batch, when the upload takes longer than a batch interval): one report less
        # for the control plane to store between the exit and the completion.
        capture.agent_line("command finished with exit status 0")
        await self.reports.uploading(exit_code=0)
        started = time.monotonic()
        try:
            uploaded = await asyncio.to_thread(upload_results, self.ctx.store, self.dirs.result, spec.results_uri)
        except (ObjectStoreError, StagingError) as e:
            msg = f"cannot upload results to {spec.results_uri}: {e}"
            return await self._end(capture, Outcome.FAILED, UPLOAD_ERROR, msg)
        files, size = uploaded.files, uploaded.size
        for link in uploaded.links:
            capture.agent_line(f"not uploaded: {link} is a symbolic link (links in $RESULT_DIR are never followed)")
        if spec.results_uri:
            capture.agent_line(
                f"uploaded {files} result files ({format_bytes(size)}) to {spec.results_uri} "
                f"in {time.monotonic() - started:.2f}s"
            )
        else:
            capture.agent_line(f"no results URI: {files} result files left unstored")
        return await self._end(capture, Outcome.COMPLETED)

    def _stage(self) -> tuple[int, int, int]:
        """The attempt's folders, code and data, in one worker-thread trip: code files, data files, bytes."""
        spec = self.work.spec
        self.dirs.create()
        code_files = stage_code(self.ctx.store, spec.code_uri, self.dirs, ExtractionBudget(*self.ctx.code_limits))
        data_files, data_bytes = stage_data(self.ctx.store, spec.data_uri, self.dirs.data)
        if resumed(self.work):
            started = time.monotonic()
            files, size = restore_checkpoint(self.ctx.store, self.work.resume_from, self.dirs.checkpoint)
            self._restored = (files, size, time.monotonic() - started)
        return code_files, data_files, data_bytes

    async def _wait(self, proc: LocalProcess | ContainerProcess) -> tuple[int, str]:
        """Exit status, and what stopped the command: '' (it ended), 'cancel' or 'shutdown'."""
        exited = asyncio.create_task(_returncode(proc))
        canceled = asyncio.create_task(self._cancel.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        detaching = asyncio.create_task(self._detaching.wait())
        try:
            await asyncio.wait({exited, canceled, stopping, detaching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            canceled.cancel()
            stopping.cancel()
            detaching.cancel()
        if exited.done():
            return exited.result(), ""
        if self._detaching.is_set() and isinstance(proc, ContainerProcess) and not self._cancel.is_set():
            exited.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exited
            return 0, "detach"
        by = "cancel" if self._cancel.is_set() else "shutdown"
        grace = self._cancel_grace_s if by == "cancel" else self._stop_grace_s
        self._log.info("stopping command", by=by, grace_s=grace)
        returncode = await proc.terminate(grace)
        with contextlib.suppress(asyncio.CancelledError):
            await exited
        return returncode, by

    def remove_work_dir(self) -> None:
        """Called for attempts that ended well; failed ones are kept for a look (see main)."""
        remove_tree(self.dirs.root)
        with contextlib.suppress(OSError):
            self.dirs.root.parent.rmdir()


async def _returncode(proc: LocalProcess | ContainerProcess) -> int:
    if isinstance(proc, ContainerProcess):
        return (await proc.wait()).returncode
    return await proc.wait()
