"""Request validation etcd does in its gRPC layer, before proposing.

The server should call ``validate_request`` before proposing (so bad requests
never reach the log); ``MVCCStore.execute`` calls it too, which is harmless
because validation is a pure function of the request.
"""

from __future__ import annotations

from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    InvalidSortOptionError,
    KeyNotFoundError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)

MAX_TXN_OPS = 128
"""etcd's default --max-txn-ops."""

_Interval = tuple[bytes, bytes | None]  # (begin, end); end None = a single key


def validate_request(request: Message, max_txn_ops: int = MAX_TXN_OPS) -> None:
    """Raise the RequestError etcd's gRPC layer would raise for ``request``, if any."""
    if isinstance(request, rpc_pb2.RangeRequest):
        _check_range(request)
    elif isinstance(request, rpc_pb2.PutRequest):
        _check_put(request)
    elif isinstance(request, rpc_pb2.DeleteRangeRequest):
        _check_delete(request)
    elif isinstance(request, rpc_pb2.TxnRequest):
        _check_txn(request, max_txn_ops)
        _check_intervals(list(request.success))
        _check_intervals(list(request.failure))


_SORT_ORDERS = frozenset(rpc_pb2.RangeRequest.SortOrder.values())
_SORT_TARGETS = frozenset(rpc_pb2.RangeRequest.SortTarget.values())


def _check_range(r: rpc_pb2.RangeRequest) -> None:
    if not r.key:
        raise EmptyKeyError()
    # An unknown enum value decodes as itself: etcd 3.5.1 crashed sorting by one.
    if r.sort_order not in _SORT_ORDERS or r.sort_target not in _SORT_TARGETS:
        raise InvalidSortOptionError()


def _check_put(r: rpc_pb2.PutRequest) -> None:
    if not r.key:
        raise EmptyKeyError()
    if r.ignore_value and r.value:
        raise ValueProvidedError()
    if r.ignore_lease and r.lease != 0:
        raise LeaseProvidedError()


def _check_delete(r: rpc_pb2.DeleteRangeRequest) -> None:
    if not r.key:
        raise EmptyKeyError()


def _check_txn(r: rpc_pb2.TxnRequest, max_ops: int) -> None:
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_ops:
        raise TooManyOpsError()
    for c in r.compare:
        if not c.key:
            raise EmptyKeyError()
    for op in (*r.success, *r.failure):
        _check_op(op, max_ops - opc)


def _check_op(op: rpc_pb2.RequestOp, max_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        _check_range(op.request_range)
    elif kind == "request_put":
        _check_put(op.request_put)
    elif kind == "request_delete_range":
        _check_delete(op.request_delete_range)
    elif kind == "request_txn":
        _check_txn(op.request_txn, max_ops)
    else:
        raise KeyNotFoundError()  # etcd answers an empty op this way


def _hits(dels: list[_Interval], key: bytes) -> bool:
    # Byte-wise [begin, end): a range_end of "\0" is a literal, empty interval here, as in
    # etcd's interval tree (only the apply path reads "\0" as "to the end").
    for begin, end in dels:
        if end is None:
            if begin == key:
                return True
        elif begin <= key < end:
            return True
    return False


def _check_intervals(ops: list[rpc_pb2.RequestOp]) -> tuple[set[bytes], list[_Interval]]:
    """etcd's checkIntervals: no key may be put twice, or put and deleted, in one txn."""
    dels: list[_Interval] = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.append((d.key, d.range_end if d.range_end else None))
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(list(op.request_txn.success))
        puts_else, dels_else = _check_intervals(list(op.request_txn.failure))
        for k in puts_then:
            if k in puts or _hits(dels, k):
                raise DuplicateKeyError()
            puts.add(k)
        for k in puts_else:
            # then/else are exclusive: the same key in both branches is fine
            if (k in puts and k not in puts_then) or _hits(dels, k):
                raise DuplicateKeyError()
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or _hits(dels, k):
            raise DuplicateKeyError()
        puts.add(k)
    return puts, dels
