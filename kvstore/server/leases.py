"""Leases on the leader: expiry through Raft, and the calls only it can answer.

As in etcd, the lessor's primary is the leader: it alone decides that a lease
expired (and proposes its revoke), and a follower passes keep-alives and
time-to-live calls on to it over the peer link and relays the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message as PbMessage

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import (
    LeaseNotFoundError,
    NoLeaderError,
    NotPrimaryError,
    RemoteError,
    RequestTimeoutError,
)
from kvstore.lease.lessor import LeaseExpiringError
from kvstore.raft.types import Role
from kvstore.rpc.status import StatusCode
from kvstore.server.node import Node
from kvstore.server.peerwire import PeerMethod
from kvstore.server.transport import PeerUnreachableError, Transport

R = TypeVar("R", rpc_pb2.LeaseKeepAliveResponse, rpc_pb2.LeaseTimeToLiveResponse)

FORWARD_ATTEMPTS = 3
EXPIRY_INTERVAL_SECONDS = 0.5
"""How often the leader looks for expired leases and due checkpoints (etcd: 500 ms)."""


async def expire_leases(node: Node) -> None:
    """On the leader: propose revokes for expired leases, and checkpoints, through Raft."""
    while True:
        await asyncio.sleep(EXPIRY_INTERVAL_SECONDS)
        if node.role != Role.LEADER:
            continue
        lessor = node.store.lessor
        for lease_id in lessor.expired():
            node.propose_nowait(rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        checkpoints = lessor.due_checkpoints()
        if checkpoints:
            req = rpc_pb2.LeaseCheckpointRequest()
            for lease_id, remaining in checkpoints:
                req.checkpoints.add(ID=lease_id, remaining_TTL=remaining)
            node.propose_nowait(req)


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
        method: PeerMethod,
        request: PbMessage,
        response_type: type[R],
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
            try:
                return await self.transport.call(
                    leader, method, request, response_type, self._forward_timeout
                )
            except RemoteError as exc:
                if exc.code == StatusCode.FAILED_PRECONDITION:
                    await asyncio.sleep(node.cfg.heartbeat_ms / 1000)
                    continue  # the leader moved on
                raise
            except PeerUnreachableError:
                raise RequestTimeoutError() from None
        raise NoLeaderError()

    async def renew(self, req: rpc_pb2.LeaseKeepAliveRequest) -> rpc_pb2.LeaseKeepAliveResponse:
        return await self._forward(
            lambda: self.local_renew(req),
            PeerMethod.LEASE_RENEW,
            req,
            rpc_pb2.LeaseKeepAliveResponse,
        )

    async def time_to_live(
        self, req: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        return await self._forward(
            lambda: self.local_time_to_live(req),
            PeerMethod.LEASE_TIME_TO_LIVE,
            req,
            rpc_pb2.LeaseTimeToLiveResponse,
        )
