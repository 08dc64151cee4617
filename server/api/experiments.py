"""ExperimentService: submit, read, cancel, pause, resume and watch experiments."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator

import grpc

from runyard.server.api import auth
from runyard.server.api.errors import Context, abort, decode_page_token, page_size
from runyard.server.api.paging import MAX_PAGE_BYTES, trim_runs
from runyard.server.api.watching import Watcher
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import CancelExperiment, PauseExperiment, ResumeExperiment, SubmitExperiment
from runyard.server.app.experiments import Submitted
from runyard.server.app.storage_access import SubmitStorageCheck
from runyard.server.context import ServerContext
from runyard.v1 import experiment_service_pb2 as pb
from runyard.v1 import experiment_service_pb2_grpc as pb_grpc
from runyard.v1 import resources_pb2

#: Experiments read per query while filling a page (see _experiment_page).
_BATCH = 25


class ExperimentService(pb_grpc.ExperimentServiceServicer):
    def __init__(self, ctx: ServerContext, bus: MessageBus, watcher: Watcher, storage: SubmitStorageCheck) -> None:
        self._ctx = ctx
        self._bus = bus
        self._watcher = watcher
        self._storage = storage

    async def UploadCode(
        self, request_iterator: AsyncIterator[pb.UploadCodeRequest], context: Context
    ) -> pb.UploadCodeResponse:
        limit = self._ctx.config.max_code_bytes
        digest = hashlib.sha256()
        size = 0
        with tempfile.NamedTemporaryFile(prefix="runyard-code-", suffix=".tar.gz") as tmp:
            async for request in request_iterator:
                if request.total_bytes > limit:
                    await _too_big(context, request.total_bytes, limit)
                size += len(request.chunk)
                if size > limit:
                    await _too_big(context, size, limit)
                digest.update(request.chunk)
                tmp.write(request.chunk)
            tmp.flush()
            if size == 0:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunk: the code package is empty")
            sha = digest.hexdigest()
            uri = self._storage.code_uri(auth.current_principal().account_id, sha)
            try:
                await asyncio.to_thread(self._ctx.objects.upload_file, tmp.name, uri)
            except Exception as exc:  # storage is an edge: say where it failed
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot store the code package at {uri}: {exc}")
        return pb.UploadCodeResponse(code_uri=uri, sha256=sha, size_bytes=size)

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: Context
    ) -> pb.CreateExperimentResponse:
        if not request.manifest_yaml.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "manifest_yaml: is empty")
        submit = SubmitExperiment(
            auth.current_principal().account_id,
            request.manifest_yaml,
            request.code_uri,
            request.client_request_id,
            request.from_run,
        )
        try:
            submitted: Submitted = await self._bus.handle(submit)
        except Exception as exc:
            await abort(context, exc)
        experiment_id, position = submitted.experiment_id, submitted.position
        experiment = await self._ctx.read_after(position, lambda: self._ctx.queries.get_experiment(experiment_id))
        if experiment is None:
            if self._ctx.projections.position >= position:  # the read models went past it: the runs one skipped it
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the experiment {experiment_id} was stored, but the runs read model could not project it "
                    "(`runyard admin info` says why; an admin replays it with `runyard admin rebuild`)",
                )
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the experiment was stored but the read model lags; retry")
        return pb.CreateExperimentResponse(experiment=trim_runs(experiment))

    async def _own(self, experiment_id: str, context: Context) -> None:
        """NOT_FOUND unless the experiment exists and belongs to the caller's account (or the caller is an admin)."""
        found = await asyncio.to_thread(self._ctx.queries.get_experiment, experiment_id, False)
        await auth.require_owner(context, found and found.account_id, "experiment", experiment_id)

    async def GetExperiment(self, request: pb.GetExperimentRequest, context: Context) -> pb.GetExperimentResponse:
        experiment = await asyncio.to_thread(self._ctx.queries.get_experiment, request.experiment_id)
        await auth.require_owner(context, experiment and experiment.account_id, "experiment", request.experiment_id)
        if experiment is not None:
            await self._ctx.explain_queue(experiment.runs)
        return pb.GetExperimentResponse(experiment=experiment and trim_runs(experiment))

    async def ListExperiments(self, request: pb.ListExperimentsRequest, context: Context) -> pb.ListExperimentsResponse:
        try:
            before = decode_page_token(request.page_token)
        except ValueError as exc:
            await abort(context, exc)
        size = page_size(request.page_size)
        experiments, token = await asyncio.to_thread(self._experiment_page, before, size, auth.account_scope())
        return pb.ListExperimentsResponse(experiments=experiments, next_page_token=token)

    def _experiment_page(self, before: int, size: int, scope: str) -> tuple[list[resources_pb2.Experiment], str]:
        """Up to `size` experiments within the page's byte budget, and the token of the next page ("" at the end).

        Read in small batches: each carries its manifest (up to 512 KiB), so a
        page of 1000 must not mean 1000 manifests in memory before cutting.
        """
        page: list[resources_pb2.Experiment] = []
        room = MAX_PAGE_BYTES
        while len(page) < size:
            want = min(_BATCH, size - len(page))
            batch = self._ctx.queries.list_experiments(before, want, scope)
            for position, experiment in batch:
                room -= experiment.ByteSize() + 6
                if room < 0 and page:
                    return page, str(before)
                page.append(experiment)
                before = position
            if len(batch) < want:
                return page, ""
        return page, str(before)

    async def CancelExperiment(
        self, request: pb.CancelExperimentRequest, context: Context
    ) -> pb.CancelExperimentResponse:
        await self._own(request.experiment_id, context)
        try:
            position = await self._bus.handle(CancelExperiment(request.experiment_id, "canceled by user"))
        except Exception as exc:
            await abort(context, exc)
        experiment = await self._ctx.read_after(
            position, lambda: self._ctx.queries.get_experiment(request.experiment_id)
        )
        return pb.CancelExperimentResponse(experiment=experiment and trim_runs(experiment))

    async def PauseExperiment(self, request: pb.PauseExperimentRequest, context: Context) -> pb.PauseExperimentResponse:
        await self._own(request.experiment_id, context)
        try:
            position = await self._bus.handle(PauseExperiment(request.experiment_id, request.reason))
        except Exception as exc:
            await abort(context, exc)
        experiment = await self._ctx.read_after(
            position, lambda: self._ctx.queries.get_experiment(request.experiment_id)
        )
        return pb.PauseExperimentResponse(experiment=experiment and trim_runs(experiment))

    async def ResumeExperiment(
        self, request: pb.ResumeExperimentRequest, context: Context
    ) -> pb.ResumeExperimentResponse:
        await self._own(request.experiment_id, context)
        try:
            position = await self._bus.handle(ResumeExperiment(request.experiment_id, request.reason))
        except Exception as exc:
            await abort(context, exc)
        experiment = await self._ctx.read_after(
            position, lambda: self._ctx.queries.get_experiment(request.experiment_id)
        )
        return pb.ResumeExperimentResponse(experiment=experiment and trim_runs(experiment))

    async def WatchExperiment(
        self, request: pb.WatchExperimentRequest, context: Context
    ) -> AsyncIterator[pb.WatchExperimentResponse]:
        await self._own(request.experiment_id, context)
        try:
            async for update in self._watcher.experiment(request.experiment_id, request.cursor):
                yield pb.WatchExperimentResponse(update=update)
        except ValueError as exc:
            await abort(context, exc)


async def _too_big(context: Context, size: int, limit: int) -> None:
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"code package of {size} bytes is over the server's limit of {limit} bytes (--max-code-bytes)",
    )
