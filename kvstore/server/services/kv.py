"""etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

The handlers answer without a task of their own: a serializable read answers
at once, a linearizable one and a write with a future the raft loop resolves.
"""

from __future__ import annotations

from typing import Any

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.mvcc.store import txn_readonly
from kvstore.mvcc.validate import validate_request
from kvstore.rpc import CallContext, Method
from kvstore.server.services.core import Core

SERVICE = "/etcdserverpb.KV/"


class KVService:
    def __init__(self, core: Core) -> None:
        self.core = core

    def range(self, req: rpc_pb2.RangeRequest, ctx: CallContext) -> Any:
        core = self.core
        core.check_size(req)
        validate_request(req)
        if req.serializable:
            return self._range_now(req)
        return core.node.linearized(lambda: self._range_now(req))

    def _range_now(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        node = self.core.node
        resp = node.store.range(req)
        node.metrics.mvcc_range += 1
        self.core.fill_header(resp.header)
        return resp

    def _write(self, req: Any, check_quota: bool) -> Any:
        core = self.core
        core.check_size(req)
        validate_request(req, core.cfg.max_txn_ops)
        if check_quota and core.over_quota(req):
            return core.refuse_over_quota()
        return core.node.submit(req)

    def put(self, req: rpc_pb2.PutRequest, ctx: CallContext) -> Any:
        return self._write(req, check_quota=True)

    def delete_range(self, req: rpc_pb2.DeleteRangeRequest, ctx: CallContext) -> Any:
        return self._write(req, check_quota=False)

    def txn(self, req: rpc_pb2.TxnRequest, ctx: CallContext) -> Any:
        if not txn_readonly(req):
            return self._write(req, check_quota=True)
        # Like etcd: a txn without writes is a linearizable read, not a proposal.
        core = self.core
        core.check_size(req)
        validate_request(req, core.cfg.max_txn_ops)
        if core.over_quota(req):  # etcd checks every Txn, reads included
            return core.refuse_over_quota()
        return core.node.linearized(lambda: self._execute_now(req))

    def _execute_now(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        node = self.core.node
        resp = node.store.execute(req)
        node.metrics.mvcc_txn += 1
        node.metrics.mvcc_range += len(resp.responses)  # a read-only txn: only ranges
        self.core.fill_header(resp.header)
        return resp

    def compact(self, req: rpc_pb2.CompactionRequest, ctx: CallContext) -> Any:
        return self.core.node.submit(req)

    def methods(self) -> list[tuple[str, Method]]:
        return [
            (SERVICE + "Range", Method(rpc_pb2.RangeRequest, self.range)),
            (SERVICE + "Put", Method(rpc_pb2.PutRequest, self.put)),
            (SERVICE + "DeleteRange", Method(rpc_pb2.DeleteRangeRequest, self.delete_range)),
            (SERVICE + "Txn", Method(rpc_pb2.TxnRequest, self.txn)),
            (SERVICE + "Compact", Method(rpc_pb2.CompactionRequest, self.compact)),
        ]
