"""etcd's Lease service: grant, revoke, keep-alive, time-to-live, list."""

from __future__ import annotations

from collections.abc import AsyncIterator

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import NoLeaderError
from kvstore.rpc import CallContext, Cardinality, Method
from kvstore.server.services.core import Core, requires_leader

SERVICE = "/etcdserverpb.Lease/"


class LeaseService:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def grant(
        self, request: rpc_pb2.LeaseGrantRequest, ctx: CallContext
    ) -> rpc_pb2.LeaseGrantResponse:
        core = self.core
        req = rpc_pb2.LeaseGrantRequest()
        req.CopyFrom(request)
        if req.ID == 0:
            req.ID = core.new_lease_id()
        await core.check_quota(req)
        resp: rpc_pb2.LeaseGrantResponse = await core.node.propose(req)
        core.fill_header(resp.header)
        return resp

    async def revoke(
        self, req: rpc_pb2.LeaseRevokeRequest, ctx: CallContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        resp: rpc_pb2.LeaseRevokeResponse = await self.core.node.propose(req)
        self.core.fill_header(resp.header)
        return resp

    async def keep_alive(
        self, requests: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest], ctx: CallContext
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        core = self.core
        if requires_leader(ctx) and not core.node.leader_id:
            raise NoLeaderError()
        async for req in requests:
            resp = await core.leases.renew(req)
            core.fill_header(resp.header)
            yield resp

    async def time_to_live(
        self, req: rpc_pb2.LeaseTimeToLiveRequest, ctx: CallContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        resp = await self.core.leases.time_to_live(req)
        self.core.fill_header(resp.header)
        return resp

    async def leases(
        self, req: rpc_pb2.LeaseLeasesRequest, ctx: CallContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        core = self.core
        await core.node.read_index()
        resp = core.node.store.lease_leases()
        core.fill_header(resp.header)
        return resp

    def methods(self) -> list[tuple[str, Method]]:
        keep_alive = Method(rpc_pb2.LeaseKeepAliveRequest, self.keep_alive, Cardinality.BIDI_STREAM)
        return [
            (SERVICE + "LeaseGrant", Method(rpc_pb2.LeaseGrantRequest, self.grant)),
            (SERVICE + "LeaseRevoke", Method(rpc_pb2.LeaseRevokeRequest, self.revoke)),
            (SERVICE + "LeaseKeepAlive", keep_alive),
            (
                SERVICE + "LeaseTimeToLive",
                Method(rpc_pb2.LeaseTimeToLiveRequest, self.time_to_live),
            ),
            (SERVICE + "LeaseLeases", Method(rpc_pb2.LeaseLeasesRequest, self.leases)),
        ]
