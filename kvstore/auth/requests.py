"""What each KV and lease request needs of its user, as etcd's auth applier checks it.

Used twice for a write, as in etcd: by the member that takes a read (Range,
read-only Txn) before answering it, and by every member applying a write, with
the user and auth revision the write was proposed with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.auth.store import AuthInfo, AuthStore

LeaseKeys = Callable[[int], Iterable[bytes] | None]
"""A lease's attached keys (None: no such lease)."""


def check_request(
    auth: AuthStore, info: AuthInfo | None, request: Message, lease_keys: LeaseKeys
) -> None:
    """Raise etcd's error unless ``info`` may make ``request`` (auth on; a KV or lease write)."""
    if isinstance(request, rpc_pb2.PutRequest):
        _check_put(auth, info, request, lease_keys)
    elif isinstance(request, rpc_pb2.DeleteRangeRequest):
        _check_delete(auth, info, request)
    elif isinstance(request, rpc_pb2.TxnRequest):
        check_txn(auth, info, request, lease_keys)
    elif isinstance(request, rpc_pb2.RangeRequest):
        auth.check_read(info, request.key, request.range_end)
    elif isinstance(request, rpc_pb2.LeaseRevokeRequest):
        _check_lease_keys(auth, info, request.ID, lease_keys)


def _check_put(
    auth: AuthStore, info: AuthInfo | None, put: rpc_pb2.PutRequest, lease_keys: LeaseKeys
) -> None:
    auth.check_write(info, put.key)
    # Attaching a lease whose keys the user may not write would let it revoke them.
    _check_lease_keys(auth, info, put.lease, lease_keys)
    if put.prev_kv:
        auth.check_read(info, put.key)


def _check_delete(auth: AuthStore, info: AuthInfo | None, d: rpc_pb2.DeleteRangeRequest) -> None:
    auth.check_write(info, d.key, d.range_end)
    if d.prev_kv:
        auth.check_read(info, d.key, d.range_end)


def _check_lease_keys(
    auth: AuthStore, info: AuthInfo | None, lease: int, lease_keys: LeaseKeys
) -> None:
    if not lease:
        return
    keys = lease_keys(lease)
    if keys is None or auth.is_admin(info):
        return
    for key in keys:
        auth.check_write(info, key)


def check_txn(
    auth: AuthStore, info: AuthInfo | None, txn: rpc_pb2.TxnRequest, lease_keys: LeaseKeys
) -> None:
    """Every compare is a read; every op of both branches is checked, nested txns included."""
    for compare in txn.compare:
        auth.check_read(info, compare.key, compare.range_end)
    _check_ops(auth, info, txn.success, lease_keys)
    _check_ops(auth, info, txn.failure, lease_keys)


def _check_ops(
    auth: AuthStore,
    info: AuthInfo | None,
    ops: Sequence[rpc_pb2.RequestOp],
    lease_keys: LeaseKeys,
) -> None:
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            auth.check_read(info, op.request_range.key, op.request_range.range_end)
        elif kind == "request_put":
            _check_put(auth, info, op.request_put, lease_keys)
        elif kind == "request_delete_range":
            d = op.request_delete_range
            if d.prev_kv:
                auth.check_read(info, d.key, d.range_end)
            auth.check_write(info, d.key, d.range_end)
        elif kind == "request_txn":
            check_txn(auth, info, op.request_txn, lease_keys)
