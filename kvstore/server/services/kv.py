"""etcd's KV service: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.mvcc.store import txn_readonly
from kvstore.mvcc.validate import validate_request
from kvstore.rpc import CallContext, Method
from kvstore.server.services.core import Core

SERVICE = "/etcdserverpb.KV/"


class KVService:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def range(self, req: rpc_pb2.RangeRequest, ctx: CallContext) -> rpc_pb2.RangeResponse:
        core = self.core
        core.check_size(req)
        validate_request(req)
        if not req.serializable:
            await core.node.read_index()
        resp = core.node.store.range(req)
        core.node.metrics.mvcc_range += 1
        core.fill_header(resp.header)
        return resp

    async def _write(
        self,
        req: rpc_pb2.PutRequest | rpc_pb2.DeleteRangeRequest | rpc_pb2.TxnRequest,
        check_quota: bool,
    ) -> rpc_pb2.PutResponse | rpc_pb2.DeleteRangeResponse | rpc_pb2.TxnResponse:
        core = self.core
        core.check_size(req)
        validate_request(req, core.cfg.max_txn_ops)
        if check_quota:
            await core.check_quota(req)
        resp = await core.node.propose(req)
        core.fill_header(resp.header)
        return resp  # type: ignore[no-any-return]

    async def put(self, req: rpc_pb2.PutRequest, ctx: CallContext) -> rpc_pb2.PutResponse:
        return await self._write(req, check_quota=True)  # type: ignore[return-value]

    async def delete_range(
        self, req: rpc_pb2.DeleteRangeRequest, ctx: CallContext
    ) -> rpc_pb2.DeleteRangeResponse:
        return await self._write(req, check_quota=False)  # type: ignore[return-value]

    async def txn(self, req: rpc_pb2.TxnRequest, ctx: CallContext) -> rpc_pb2.TxnResponse:
        if not txn_readonly(req):
            return await self._write(req, check_quota=True)  # type: ignore[return-value]
        # Like etcd: a txn without writes is a linearizable read, not a proposal.
        core = self.core
        core.check_size(req)
        validate_request(req, core.cfg.max_txn_ops)
        await core.check_quota(req)  # etcd checks every Txn, reads included
        await core.node.read_index()
        resp = core.node.store.execute(req)
        core.node.metrics.mvcc_txn += 1
        core.node.metrics.mvcc_range += len(resp.responses)  # a read-only txn: only ranges
        core.fill_header(resp.header)
        return resp

    async def compact(
        self, req: rpc_pb2.CompactionRequest, ctx: CallContext
    ) -> rpc_pb2.CompactionResponse:
        core = self.core
        resp: rpc_pb2.CompactionResponse = await core.node.propose(req)
        core.fill_header(resp.header)
        return resp

    def methods(self) -> list[tuple[str, Method]]:
        return [
            (SERVICE + "Range", Method(rpc_pb2.RangeRequest, self.range)),
            (SERVICE + "Put", Method(rpc_pb2.PutRequest, self.put)),
            (SERVICE + "DeleteRange", Method(rpc_pb2.DeleteRangeRequest, self.delete_range)),
            (SERVICE + "Txn", Method(rpc_pb2.TxnRequest, self.txn)),
            (SERVICE + "Compact", Method(rpc_pb2.CompactionRequest, self.compact)),
        ]
