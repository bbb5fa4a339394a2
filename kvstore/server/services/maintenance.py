"""etcd's Maintenance service: status, alarms, backups, defragmentation, hashes, leader moves."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import BadLeaderTransfereeError, LeaderTransferTimeoutError, NotPrimaryError
from kvstore.raft.types import Role
from kvstore.rpc import CallContext, Cardinality, Method
from kvstore.server.backup import backend_hash_of, stream_backup, write_etcd_backup
from kvstore.server.config import CLUSTER_VERSION, SERVER_VERSION
from kvstore.server.services.core import Core

SERVICE = "/etcdserverpb.Maintenance/"


def alarm_text(alarm: rpc_pb2.AlarmMember) -> str:
    """An alarm as etcd lists it in a Status response's errors."""
    return f"memberID:{alarm.memberID} alarm:{rpc_pb2.AlarmType.Name(alarm.alarm)} "


class MaintenanceService:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def status(
        self, request: rpc_pb2.StatusRequest, ctx: CallContext
    ) -> rpc_pb2.StatusResponse:
        core = self.core
        n = core.node
        size = n.store.db_size()
        resp = rpc_pb2.StatusResponse(
            version=SERVER_VERSION,
            dbSize=size,
            dbSizeInUse=size,
            leader=n.leader_id,
            raftIndex=n.committed_index,
            raftTerm=n.term,
            raftAppliedIndex=n.applied_index,
            isLearner=n.id in n.raft.conf_state.learners,
        )
        if not n.leader_id:
            resp.errors.append("etcdserver: no leader")
        resp.errors.extend(alarm_text(a) for a in n.store.alarm_members())
        core.fill_header(resp.header)
        return resp

    async def alarm(self, request: rpc_pb2.AlarmRequest, ctx: CallContext) -> rpc_pb2.AlarmResponse:
        # Through Raft like etcd, reads included: the answer is linearizable.
        resp: rpc_pb2.AlarmResponse = await self.core.node.propose(request)
        self.core.fill_header(resp.header)
        return resp

    async def snapshot(
        self, request: rpc_pb2.SnapshotRequest, ctx: CallContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        core = self.core
        node = core.node
        work = Path(tempfile.mkdtemp(prefix="backup-", dir=Path(core.cfg.data_dir) / "member"))
        view = node.store.open_view()
        copying = asyncio.ensure_future(
            asyncio.to_thread(
                write_etcd_backup,
                view,
                work / "db",
                term=node.term,
                cluster_version=CLUSTER_VERSION,
            )
        )
        try:
            # Shielded: the copy runs on if the client goes, and the cleanup waits for it.
            db_file = await asyncio.shield(copying)
            for remaining, blob in stream_backup(db_file):
                # No header: etcd 3.5 sends none on snapshot chunks.
                yield rpc_pb2.SnapshotResponse(remaining_bytes=remaining, blob=blob)
        finally:
            copying.add_done_callback(lambda _: shutil.rmtree(work, ignore_errors=True))

    async def defragment(
        self, request: rpc_pb2.DefragmentRequest, ctx: CallContext
    ) -> rpc_pb2.DefragmentResponse:
        self.core.node.defragment()
        return rpc_pb2.DefragmentResponse()  # no header: etcd 3.5 sends none

    async def hash(self, request: rpc_pb2.HashRequest, ctx: CallContext) -> rpc_pb2.HashResponse:
        """CRC-32C of the backend as etcd lays it out, from a pinned view, off the loop."""
        node = self.core.node
        view = node.store.open_view()
        revision = node.store.current_revision
        h = await asyncio.to_thread(
            backend_hash_of, view, term=node.term, cluster_version=CLUSTER_VERSION
        )
        resp = rpc_pb2.HashResponse(hash=h)
        self.core.fill_header(resp.header)
        resp.header.revision = revision
        return resp

    async def hash_kv(
        self, request: rpc_pb2.HashKVRequest, ctx: CallContext
    ) -> rpc_pb2.HashKVResponse:
        h, compact, _ = self.core.node.store.hash_kv(request.revision)
        resp = rpc_pb2.HashKVResponse(hash=h, compact_revision=compact)
        self.core.fill_header(resp.header)  # revision: the current one, as etcd answers
        return resp

    async def move_leader(
        self, request: rpc_pb2.MoveLeaderRequest, ctx: CallContext
    ) -> rpc_pb2.MoveLeaderResponse:
        core = self.core
        node = core.node
        if node.role != Role.LEADER:
            raise NotPrimaryError()
        target = request.targetID
        transferee = next((m for m in core.membership.described() if m.id == target), None)
        if transferee is None or transferee.is_learner:
            raise BadLeaderTransfereeError()
        node.raft.transfer_leadership(target)
        deadline = time.monotonic() + core.cfg.request_timeout
        while node.leader_id != target:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaderTransferTimeoutError()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.leader_changed.wait(), left)
        return rpc_pb2.MoveLeaderResponse()  # no header: etcd 3.5 sends none

    def methods(self) -> list[tuple[str, Method]]:
        snapshot = Method(rpc_pb2.SnapshotRequest, self.snapshot, Cardinality.SERVER_STREAM)
        return [
            (SERVICE + "Status", Method(rpc_pb2.StatusRequest, self.status)),
            (SERVICE + "Alarm", Method(rpc_pb2.AlarmRequest, self.alarm)),
            (SERVICE + "Snapshot", snapshot),
            (SERVICE + "Defragment", Method(rpc_pb2.DefragmentRequest, self.defragment)),
            (SERVICE + "Hash", Method(rpc_pb2.HashRequest, self.hash)),
            (SERVICE + "HashKV", Method(rpc_pb2.HashKVRequest, self.hash_kv)),
            (SERVICE + "MoveLeader", Method(rpc_pb2.MoveLeaderRequest, self.move_leader)),
        ]
