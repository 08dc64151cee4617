"""AdminService: rebuild read models, list agents, describe the server."""

from __future__ import annotations

import asyncio

import runyard
from runyard.server.api.errors import Context
from runyard.server.context import ServerContext
from runyard.v1 import admin_service_pb2 as pb
from runyard.v1 import admin_service_pb2_grpc as pb_grpc


class AdminService(pb_grpc.AdminServiceServicer):
    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    async def RebuildProjections(
        self, request: pb.RebuildProjectionsRequest, context: Context
    ) -> pb.RebuildProjectionsResponse:
        count, seconds = await asyncio.to_thread(self._ctx.projections.rebuild)
        return pb.RebuildProjectionsResponse(events_replayed=count, seconds=seconds)

    async def ListAgents(self, request: pb.ListAgentsRequest, context: Context) -> pb.ListAgentsResponse:
        agents = await asyncio.to_thread(self._ctx.queries.list_agents)
        return pb.ListAgentsResponse(agents=agents)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: Context) -> pb.GetServerInfoResponse:
        head = await asyncio.to_thread(self._ctx.store.head_position)
        return pb.GetServerInfoResponse(
            version=runyard.__version__,
            code_uri_prefix=self._ctx.config.code_uri_prefix,
            max_code_bytes=self._ctx.config.max_code_bytes,
            head_position=head,
        )
