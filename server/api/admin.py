"""AdminService: operate the control plane: accounts, keys, quotas, priorities, agents, read models.

Who may call what is decided by the auth interceptor (`auth.RULES`): every RPC
here is admin-only except GetServerInfo and WhoAmI.
"""

from __future__ import annotations

import asyncio

import grpc

import runyard
from runyard.server.api import auth
from runyard.server.api.errors import Context, abort, page_size
from runyard.server.app.accounts import CreatedKey
from runyard.server.app.aggregates import ACCOUNT, API_KEY
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import (
    CreateAccount,
    CreateApiKey,
    DrainAgent,
    RevokeApiKey,
    SetAccountPreemption,
    SetAccountStorage,
    SetExperimentPriority,
    SetQuota,
)
from runyard.server.context import ServerContext
from runyard.server.domain.account import check_account_id
from runyard.server.queries.accounts import AccountQueries
from runyard.v1 import admin_service_pb2 as pb
from runyard.v1 import admin_service_pb2_grpc as pb_grpc
from runyard.v1 import common_pb2, resources_pb2


class AdminService(pb_grpc.AdminServiceServicer):
    def __init__(self, ctx: ServerContext, bus: MessageBus) -> None:
        self._ctx = ctx
        self._bus = bus
        self._accounts = AccountQueries(ctx.store.read_engine)

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
        # Errors may quote another account's data: only an admin sees them.
        admin = auth.is_admin(auth.current_principal())
        failures = await asyncio.to_thread(self._ctx.projections.failures) if admin else []
        return pb.GetServerInfoResponse(
            version=runyard.__version__,
            code_uri_prefix=self._ctx.config.code_uri_prefix,
            max_code_bytes=self._ctx.config.max_code_bytes,
            head_position=head,
            read_model_failures=[
                pb.ReadModelFailure(
                    read_model=f.read_model,
                    position=f.position,
                    event_type=f.event_type,
                    error=f.error,
                    skipped=f.skipped,
                )
                for f in failures
            ],
        )

    # -- accounts and keys -----------------------------------------------------

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Context) -> pb.CreateAccountResponse:
        try:
            position = await self._bus.handle(
                CreateAccount(
                    request.account_id,
                    request.name,
                    request.gpu_quota,
                    request.max_queued_runs,
                    request.run_quota,
                    list(request.storage_prefixes),
                )
            )
        except Exception as exc:
            await abort(context, exc)
        account = await self._ctx.read_after(position, lambda: self._account(request.account_id))
        return pb.CreateAccountResponse(account=account)

    async def ListAccounts(self, request: pb.ListAccountsRequest, context: Context) -> pb.ListAccountsResponse:
        size = page_size(request.page_size)
        accounts = await asyncio.to_thread(self._list_accounts, request.page_token, size)
        token = accounts[-1].id if len(accounts) == size else ""
        return pb.ListAccountsResponse(accounts=accounts, next_page_token=token)

    async def SetAccountStorage(
        self, request: pb.SetAccountStorageRequest, context: Context
    ) -> pb.SetAccountStorageResponse:
        try:
            check_account_id(request.account_id)
            position = await self._bus.handle(
                SetAccountStorage(request.account_id, list(request.allow), list(request.revoke))
            )
        except Exception as exc:
            await abort(context, exc)
        account = await self._ctx.read_after(position, lambda: self._account(request.account_id))
        return pb.SetAccountStorageResponse(account=account)

    def _account(self, account_id: str) -> resources_pb2.Account | None:
        found = self._accounts.get_account(account_id)
        return None if found is None else self._with_storage(found)

    def _list_accounts(self, after_id: str, size: int) -> list[resources_pb2.Account]:
        return [self._with_storage(a) for a in self._accounts.list_accounts(after_id, size)]

    def _with_storage(self, account: resources_pb2.Account) -> resources_pb2.Account:
        """Grants come from the account's own stream (few events, read by id); the accounts table has no column."""
        loaded = self._bus.load(ACCOUNT, account.id)
        account.storage_prefixes[:] = loaded.storage_prefixes
        account.not_preemptible = not loaded.preemptible
        return account

    async def SetQuota(self, request: pb.SetQuotaRequest, context: Context) -> pb.SetQuotaResponse:
        try:
            # A larger plan may admit queued runs at once: AccountQuotaSet wakes the scheduler.
            position = await self._bus.handle(
                SetQuota(request.account_id, request.gpu_quota, request.max_queued_runs, request.run_quota)
            )
        except Exception as exc:
            await abort(context, exc)
        account = await self._ctx.read_after(position, lambda: self._account(request.account_id))
        return pb.SetQuotaResponse(account=account)

    async def SetAccountPreemption(
        self, request: pb.SetAccountPreemptionRequest, context: Context
    ) -> pb.SetAccountPreemptionResponse:
        try:
            check_account_id(request.account_id)
            # The scheduler reads the policy from the accounts read model: AccountPreemptionSet wakes it.
            position = await self._bus.handle(SetAccountPreemption(request.account_id, request.preemptible))
        except Exception as exc:
            await abort(context, exc)
        account = await self._ctx.read_after(position, lambda: self._account(request.account_id))
        return pb.SetAccountPreemptionResponse(account=account)

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Context) -> pb.CreateApiKeyResponse:
        role = request.role or common_pb2.ROLE_USER
        if role == common_pb2.ROLE_AGENT and request.agent_id:
            other = await asyncio.to_thread(self._agent_account, request.agent_id, request.account_id)
            if other:
                # An agent id belongs to one account: a key of another account must never speak for it.
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"agent_id: agent {request.agent_id!r} has a live key of account {other!r}; "
                    "revoke that key first or choose another agent id",
                )
        try:
            created: CreatedKey = await self._bus.handle(
                CreateApiKey(request.account_id, role, request.name, request.agent_id, request.nats_public_key)
            )
        except Exception as exc:
            await abort(context, exc)
        key = await self._ctx.read_after(created.position, lambda: self._accounts.get_api_key(created.key_id))
        if key is not None:
            key.nats_public_key = request.nats_public_key
        return pb.CreateApiKeyResponse(key=key, secret=created.secret)

    def _agent_account(self, agent_id: str, account_id: str) -> str:
        """Another account with a live key bound to `agent_id` ("" when none)."""
        for key in self._accounts.list_api_keys():
            if key.agent_id == agent_id and not key.revoked and key.account_id != account_id:
                return key.account_id
        return ""

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        keys = await asyncio.to_thread(self._accounts.list_api_keys, request.account_id)
        # The agents' NATS users (for `runyard admin nats-config`) are read from the keys' own streams:
        # the api_keys read model has no column for them.
        for key in keys:
            if key.role == common_pb2.ROLE_AGENT and not key.revoked:
                loaded = await asyncio.to_thread(self._bus.load, API_KEY, key.id)
                key.nats_public_key = loaded.nats_public_key
        return pb.ListApiKeysResponse(keys=keys)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.RevokeApiKeyResponse:
        try:
            position = await self._bus.handle(RevokeApiKey(request.key_id, "revoked by an admin"))
        except Exception as exc:
            await abort(context, exc)
        key = await self._ctx.read_after(position, lambda: self._accounts.get_api_key(request.key_id))
        return pb.RevokeApiKeyResponse(key=key)

    # -- scheduling --------------------------------------------------------------

    async def SetExperimentPriority(
        self, request: pb.SetExperimentPriorityRequest, context: Context
    ) -> pb.SetExperimentPriorityResponse:
        try:
            position = await self._bus.handle(SetExperimentPriority(request.experiment_id, request.priority))
        except Exception as exc:
            await abort(context, exc)
        if position:
            await self._ctx.read_after(position, lambda: None)
        return pb.SetExperimentPriorityResponse()

    async def DrainAgent(self, request: pb.DrainAgentRequest, context: Context) -> pb.DrainAgentResponse:
        if not request.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id: is required")
        try:
            position = await self._bus.handle(DrainAgent(request.agent_id, request.undrain, "drained by an admin"))
        except Exception as exc:
            await abort(context, exc)
        agents = await self._ctx.read_after(position, lambda: self._ctx.queries.list_agents(request.agent_id))
        if not agents:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent {request.agent_id} not found")
        return pb.DrainAgentResponse(agent=agents[0])

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Context) -> pb.WhoAmIResponse:
        principal = auth.current_principal()
        return pb.WhoAmIResponse(
            account_id=principal.account_id,
            role=principal.role,  # type: ignore[arg-type]
            key_id=principal.key_id,
        )
