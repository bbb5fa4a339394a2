"""etcd v3 gRPC services (KV, Watch, Lease, Cluster, Maintenance) on top of the node."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from kvstore.errors import (
    LeaseNotFoundError,
    NoLeaderError,
    NotPrimaryError,
    RequestError,
    RequestTooLargeError,
)
from kvstore.mvcc.store import _txn_readonly as txn_readonly
from kvstore.mvcc.validate import validate_request
from kvstore.raft.types import Role
from kvstore.server.backup import stream_backup
from kvstore.server.config import SERVER_VERSION
from kvstore.server.quota import check_quota
from kvstore.server.status import to_status

if TYPE_CHECKING:
    from kvstore.server.server import EtcdServer

log = logging.getLogger(__name__)

T = TypeVar("T")
REQUIRE_LEADER_KEY = "hasleader"


_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with etcd's status for ``exc`` (mapped in :mod:`kvstore.server.status`)."""
    code, message = to_status(exc)
    await context.abort(_GRPC_CODES[code], message)


async def _call(context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
    """Run a handler body; any error becomes etcd's gRPC status (the one mapping place)."""
    try:
        return await fn()
    except Exception as exc:
        await abort(context, exc)
        raise AssertionError("unreachable") from None


def alarm_text(alarm: rpc_pb2.AlarmMember) -> str:
    """An alarm as etcd lists it in a Status response's errors."""
    return f"memberID:{alarm.memberID} alarm:{rpc_pb2.AlarmType.Name(alarm.alarm)} "


def _requires_leader(context: grpc.aio.ServicerContext) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == REQUIRE_LEADER_KEY and value == "true":
            return True
    return False


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        async def body() -> rpc_pb2.RangeResponse:
            s = self.s
            s.check_size(request)
            validate_request(request)
            if not request.serializable:
                await s.node.read_index()
            resp = s.node.store.range(request)
            s.node.metrics.mvcc_range += 1
            s.fill_header(resp.header)
            return resp

        return await _call(context, body)

    async def _write(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            s = self.s
            s.check_size(request)
            validate_request(request, s.cfg.max_txn_ops)
            if isinstance(request, (rpc_pb2.PutRequest, rpc_pb2.TxnRequest)):
                await check_quota(s, request)
            resp = await s.node.propose(request)
            s.fill_header(resp.header)
            return resp

        return await _call(context, body)

    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        resp: rpc_pb2.PutResponse = await self._write(request, context)
        return resp

    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        resp: rpc_pb2.DeleteRangeResponse = await self._write(request, context)
        return resp

    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        if not txn_readonly(request):
            resp: rpc_pb2.TxnResponse = await self._write(request, context)
            return resp

        async def read() -> rpc_pb2.TxnResponse:
            # Like etcd: a txn without writes is a linearizable read, not a proposal.
            s = self.s
            s.check_size(request)
            validate_request(request, s.cfg.max_txn_ops)
            await check_quota(s, request)  # etcd checks every Txn, reads included
            await s.node.read_index()
            r = s.node.store.execute(request)
            s.node.metrics.mvcc_txn += 1
            s.node.metrics.mvcc_range += len(r.responses)  # a read-only txn: only ranges
            s.fill_header(r.header)
            return r

        return await _call(context, read)

    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        resp: rpc_pb2.CompactionResponse = await self._write(request, context)
        return resp


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def Watch(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        s = self.s
        if _requires_leader(context) and not s.node.leader_id:
            await abort(context, NoLeaderError())
        stream = s.node.hub.new_stream()
        require_leader = _requires_leader(context)
        if require_leader:
            s.leader_streams.add(stream)

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    kind = req.WhichOneof("request_union")
                    if kind == "create_request":
                        stream.watch(req.create_request)
                    elif kind == "cancel_request":
                        stream.cancel(req.cancel_request.watch_id)
                    elif kind == "progress_request":
                        stream.request_progress()
            except grpc.aio.AioRpcError:
                stream.close()
            # A client that half-closes keeps receiving (as with etcd); the handler's
            # cancellation ends the stream.

        task = asyncio.create_task(reader())
        try:
            while True:
                resp = await stream.recv()
                if resp is None:
                    break
                h = resp.header
                h.cluster_id = s.cluster_id
                h.member_id = s.member_id
                h.raft_term = s.node.term
                yield resp
            if require_leader and not s.node.leader_id:
                await abort(context, NoLeaderError())
        finally:
            s.leader_streams.discard(stream)
            stream.close()
            task.cancel()


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        async def body() -> rpc_pb2.LeaseGrantResponse:
            req = rpc_pb2.LeaseGrantRequest()
            req.CopyFrom(request)
            if req.ID == 0:
                # Chosen before proposing, so every member applies the same ID.
                req.ID = random.getrandbits(63) or 1
            await check_quota(self.s, req)
            resp: rpc_pb2.LeaseGrantResponse = await self.s.node.propose(req)
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, body)

    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        async def body() -> rpc_pb2.LeaseRevokeResponse:
            resp: rpc_pb2.LeaseRevokeResponse = await self.s.node.propose(request)
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, body)

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        s = self.s
        if _requires_leader(context) and not s.node.leader_id:
            await abort(context, NoLeaderError())
        async for req in request_iterator:
            try:
                resp = await s.lease_renew(req)
            except RequestError as exc:
                await abort(context, exc)
            yield resp

    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        return await _call(context, lambda: self.s.lease_time_to_live(request))

    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        async def body() -> rpc_pb2.LeaseLeasesResponse:
            await self.s.node.read_index()
            resp = self.s.node.store.lease_leases()
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, body)


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        async def body() -> rpc_pb2.MemberListResponse:
            if request.linearizable:
                await self.s.node.read_index()  # the membership as of now, not as applied here
            resp = rpc_pb2.MemberListResponse()
            for m in await self.s.member_list():
                resp.members.append(m)
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, body)

    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        return await _call(context, lambda: self._headed(self.s.membership.add(request)))

    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        return await _call(context, lambda: self._headed(self.s.membership.remove(request)))

    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        return await _call(context, lambda: self._headed(self.s.membership.update(request)))

    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        return await _call(context, lambda: self._headed(self.s.membership.promote(request)))

    async def _headed(self, response: Awaitable[T]) -> T:
        """A membership change's response with this member's header."""
        resp = await response
        self.s.fill_header(resp.header)  # type: ignore[attr-defined]
        return resp


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        s = self.s
        n = s.node
        size = n.store.db_size()
        resp = rpc_pb2.StatusResponse(
            version=SERVER_VERSION,
            dbSize=size,
            dbSizeInUse=size,
            leader=n.leader_id,
            raftIndex=n.committed_index,
            raftTerm=n.term,
            raftAppliedIndex=n.applied_index,
        )
        if not n.leader_id:
            resp.errors.append("etcdserver: no leader")
        resp.errors.extend(alarm_text(a) for a in n.store.alarm_members())
        s.fill_header(resp.header)
        return resp

    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        async def body() -> rpc_pb2.AlarmResponse:
            # Through Raft like etcd, reads included: the answer is linearizable.
            resp: rpc_pb2.AlarmResponse = await self.s.node.propose(request)
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, body)

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        node = self.s.node
        work = Path(tempfile.mkdtemp(prefix="backup-", dir=Path(self.s.cfg.data_dir) / "member"))
        view = node.store.open_view()
        copying = asyncio.ensure_future(asyncio.to_thread(node.store.copy_view, view, work))
        try:
            # Shielded: the copy runs on if the client goes, and the cleanup waits for it.
            db_file = await asyncio.shield(copying)
            for remaining, blob in stream_backup(db_file):
                resp = rpc_pb2.SnapshotResponse(remaining_bytes=remaining, blob=blob)
                self.s.fill_header(resp.header)
                yield resp
        finally:
            copying.add_done_callback(lambda _: shutil.rmtree(work, ignore_errors=True))

    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        async def body() -> rpc_pb2.DefragmentResponse:
            self.s.node.defragment()
            resp = rpc_pb2.DefragmentResponse()
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, body)

    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        async def body() -> rpc_pb2.HashKVResponse:
            h, compact, rev = self.s.node.store.hash_kv(request.revision)
            resp = rpc_pb2.HashKVResponse(hash=h, compact_revision=compact)
            self.s.fill_header(resp.header)
            resp.header.revision = rev
            return resp

        return await _call(context, body)

    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        async def body() -> rpc_pb2.MoveLeaderResponse:
            n = self.s.node
            if n.role != Role.LEADER:
                raise NotPrimaryError()
            await self.s.move_leader(request.targetID)
            resp = rpc_pb2.MoveLeaderResponse()
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, body)


__all__ = [
    "ClusterService",
    "KVService",
    "LeaseNotFoundError",
    "LeaseService",
    "MaintenanceService",
    "RequestTooLargeError",
    "WatchService",
]
