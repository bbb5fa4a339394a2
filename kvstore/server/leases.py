"""Lease calls only the leader can answer: keep-alives and time-to-live, forwarded to it.

As in etcd, the lessor's primary is the leader: a follower passes these calls
on to the leader over the peer link and relays the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2_grpc
from kvstore.errors import (
    LeaseNotFoundError,
    NoLeaderError,
    NotPrimaryError,
    RequestTimeoutError,
)
from kvstore.lease.lessor import LeaseExpiringError
from kvstore.raft.types import Role
from kvstore.server.node import Node
from kvstore.server.transport import Transport

R = TypeVar("R", rpc_pb2.LeaseKeepAliveResponse, rpc_pb2.LeaseTimeToLiveResponse)

FORWARD_ATTEMPTS = 3


class LeaseForwarder:
    def __init__(self, node: Node, transport: Transport) -> None:
        self.node = node
        self.transport = transport

    @property
    def _forward_timeout(self) -> float:
        return 2 * self.node.cfg.election_ms / 1000

    async def local_renew(
        self, req: rpc_pb2.LeaseKeepAliveRequest
    ) -> rpc_pb2.LeaseKeepAliveResponse:
        """Keepalive on the leader.

        As in etcd, a lease past its deadline whose revoke is still on its way is
        answered once the revoke is applied (TTL 0) or this member stops leading:
        "not found" must never come while the lease's keys can still be read.
        """
        resp = rpc_pb2.LeaseKeepAliveResponse(ID=req.ID)
        node = self.node
        while True:
            try:
                resp.TTL = node.store.lessor.renew(req.ID)
                break
            except LeaseExpiringError:
                await node.wait_applied(node.applied_index + 1)
            except LeaseNotFoundError:
                resp.TTL = 0
                break
        resp.header.revision = node.store.current_revision
        return resp

    async def local_time_to_live(
        self, req: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        if self.node.role != Role.LEADER:
            raise NotPrimaryError()
        return self.node.store.lease_time_to_live(req)

    async def _forward(
        self,
        call_local: Callable[[], Awaitable[R]],
        call_remote: Callable[[peer_pb2_grpc.PeerStub], Awaitable[R]],
    ) -> R:
        node = self.node
        for _ in range(FORWARD_ATTEMPTS):
            leader = await node.await_leader()
            if leader == node.id:
                try:
                    return await call_local()
                except NotPrimaryError:
                    await asyncio.sleep(node.cfg.heartbeat_ms / 1000)  # leadership moving
                    continue
            peer = self.transport.peers.get(leader)
            if peer is None:
                raise NoLeaderError()
            try:
                resp = await call_remote(peer.stub())
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    await asyncio.sleep(node.cfg.heartbeat_ms / 1000)
                    continue  # leader moved on
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise RequestTimeoutError() from None
                raise
            return resp
        raise NoLeaderError()

    async def renew(self, req: rpc_pb2.LeaseKeepAliveRequest) -> rpc_pb2.LeaseKeepAliveResponse:
        timeout = self._forward_timeout
        resp: rpc_pb2.LeaseKeepAliveResponse = await self._forward(
            lambda: self.local_renew(req), lambda stub: stub.LeaseRenew(req, timeout=timeout)
        )
        return resp

    async def time_to_live(
        self, req: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        timeout = self._forward_timeout
        resp: rpc_pb2.LeaseTimeToLiveResponse = await self._forward(
            lambda: self.local_time_to_live(req),
            lambda stub: stub.LeaseTimeToLive(req, timeout=timeout),
        )
        return resp
