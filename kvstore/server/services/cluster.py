"""etcd's Cluster service: the membership, and changes to it (decided by the leader)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.rpc import CallContext, Method
from kvstore.server.services.core import Core

SERVICE = "/etcdserverpb.Cluster/"
T = TypeVar("T")


class ClusterService:
    def __init__(self, core: Core) -> None:
        self.core = core

    def _fill_header(self, header: rpc_pb2.ResponseHeader) -> None:
        """Like etcd's cluster service: no revision in the header."""
        self.core.fill_header(header)
        header.ClearField("revision")

    async def _headed(self, response: Awaitable[T]) -> T:
        """A membership change's response with this member's header."""
        resp: Any = await response
        self._fill_header(resp.header)
        return resp  # type: ignore[no-any-return]

    async def member_list(
        self, request: rpc_pb2.MemberListRequest, ctx: CallContext
    ) -> rpc_pb2.MemberListResponse:
        core = self.core
        if request.linearizable:
            await core.node.read_index()  # the membership as of now, not as applied here
        resp = rpc_pb2.MemberListResponse()
        resp.members.extend(m.to_pb() for m in core.membership.described())
        self._fill_header(resp.header)
        return resp

    async def member_add(
        self, request: rpc_pb2.MemberAddRequest, ctx: CallContext
    ) -> rpc_pb2.MemberAddResponse:
        return await self._headed(self.core.membership.add(request))

    async def member_remove(
        self, request: rpc_pb2.MemberRemoveRequest, ctx: CallContext
    ) -> rpc_pb2.MemberRemoveResponse:
        return await self._headed(self.core.membership.remove(request))

    async def member_update(
        self, request: rpc_pb2.MemberUpdateRequest, ctx: CallContext
    ) -> rpc_pb2.MemberUpdateResponse:
        return await self._headed(self.core.membership.update(request))

    async def member_promote(
        self, request: rpc_pb2.MemberPromoteRequest, ctx: CallContext
    ) -> rpc_pb2.MemberPromoteResponse:
        return await self._headed(self.core.membership.promote(request))

    def methods(self) -> list[tuple[str, Method]]:
        return [
            (SERVICE + "MemberList", Method(rpc_pb2.MemberListRequest, self.member_list)),
            (SERVICE + "MemberAdd", Method(rpc_pb2.MemberAddRequest, self.member_add)),
            (SERVICE + "MemberRemove", Method(rpc_pb2.MemberRemoveRequest, self.member_remove)),
            (SERVICE + "MemberUpdate", Method(rpc_pb2.MemberUpdateRequest, self.member_update)),
            (
                SERVICE + "MemberPromote",
                Method(rpc_pb2.MemberPromoteRequest, self.member_promote),
            ),
        ]
