"""Builders for transactions: compares, operations and the fluent ``Txn``.

>>> txn = client.txn().when(value("k") == b"old").then(put("k", b"new")).otherwise(get("k"))
>>> resp = await txn.commit()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvstore._pb.etcdserverpb import rpc_pb2 as pb

Key = bytes | str

_RESULTS = {
    "==": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    ">": pb.Compare.GREATER,
    "<": pb.Compare.LESS,
}


def to_bytes(value: Key) -> bytes:
    return value.encode() if isinstance(value, str) else value


def prefix_end(prefix: Key) -> bytes:
    """The range_end that selects every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    raw = bytearray(to_bytes(prefix))
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"  # every byte is 0xff (or empty prefix): the range runs to the end


def resolve_range_end(key: Key, range_end: Key | None, prefix: bool, from_key: bool) -> bytes:
    if sum((range_end is not None, prefix, from_key)) > 1:
        raise ValueError("give at most one of range_end, prefix and from_key")
    if prefix:
        return prefix_end(key)
    if from_key:
        return b"\0"
    return to_bytes(range_end) if range_end is not None else b""


@dataclass(frozen=True, slots=True)
class _Target:
    """Left-hand side of a compare; ``==``, ``!=``, ``<`` and ``>`` build a Compare."""

    target: pb.Compare.CompareTarget
    field: str
    key: bytes
    range_end: bytes

    def _build(self, op: str, operand: int | Key) -> pb.Compare:
        compare = pb.Compare(
            result=_RESULTS[op], target=self.target, key=self.key, range_end=self.range_end
        )
        if self.field == "value":
            compare.value = to_bytes(operand)  # type: ignore[arg-type]
        else:
            if not isinstance(operand, int):
                raise TypeError(f"{self.field} compares take an int, got {operand!r}")
            setattr(compare, self.field, operand)
        return compare

    def __eq__(self, operand: object) -> pb.Compare:  # type: ignore[override]
        return self._build("==", operand)  # type: ignore[arg-type]

    def __ne__(self, operand: object) -> pb.Compare:  # type: ignore[override]
        return self._build("!=", operand)  # type: ignore[arg-type]

    def __lt__(self, operand: int | Key) -> pb.Compare:
        return self._build("<", operand)

    def __gt__(self, operand: int | Key) -> pb.Compare:
        return self._build(">", operand)

    __hash__ = None  # type: ignore[assignment]


def _target(
    target: pb.Compare.CompareTarget,
    field: str,
    key: Key,
    range_end: Key | None,
    prefix: bool,
) -> _Target:
    return _Target(target, field, to_bytes(key), resolve_range_end(key, range_end, prefix, False))


def value(key: Key, range_end: Key | None = None, *, prefix: bool = False) -> _Target:
    """Compare the value of ``key`` (or of every key in the range)."""
    return _target(pb.Compare.VALUE, "value", key, range_end, prefix)


def version(key: Key, range_end: Key | None = None, *, prefix: bool = False) -> _Target:
    """Compare the version (0 for a missing key)."""
    return _target(pb.Compare.VERSION, "version", key, range_end, prefix)


def create_revision(key: Key, range_end: Key | None = None, *, prefix: bool = False) -> _Target:
    """Compare the create revision (0 for a missing key)."""
    return _target(pb.Compare.CREATE, "create_revision", key, range_end, prefix)


def mod_revision(key: Key, range_end: Key | None = None, *, prefix: bool = False) -> _Target:
    """Compare the modification revision (0 for a missing key)."""
    return _target(pb.Compare.MOD, "mod_revision", key, range_end, prefix)


def lease(key: Key, range_end: Key | None = None, *, prefix: bool = False) -> _Target:
    """Compare the lease ID attached to the key (0 for none)."""
    return _target(pb.Compare.LEASE, "lease", key, range_end, prefix)


def range_request(
    key: Key,
    range_end: Key | None = None,
    *,
    prefix: bool = False,
    from_key: bool = False,
    limit: int = 0,
    revision: int = 0,
    sort_order: pb.RangeRequest.SortOrder = pb.RangeRequest.NONE,
    sort_target: pb.RangeRequest.SortTarget = pb.RangeRequest.KEY,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> pb.RangeRequest:
    """A RangeRequest with every option etcd offers; ``prefix``/``from_key`` set range_end."""
    return pb.RangeRequest(
        key=to_bytes(key),
        range_end=resolve_range_end(key, range_end, prefix, from_key),
        limit=limit,
        revision=revision,
        sort_order=sort_order,
        sort_target=sort_target,
        serializable=serializable,
        keys_only=keys_only,
        count_only=count_only,
        min_mod_revision=min_mod_revision,
        max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision,
        max_create_revision=max_create_revision,
    )


def put_request(
    key: Key,
    value: Key = b"",
    *,
    lease: int = 0,
    prev_kv: bool = False,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> pb.PutRequest:
    return pb.PutRequest(
        key=to_bytes(key),
        value=to_bytes(value),
        lease=lease,
        prev_kv=prev_kv,
        ignore_value=ignore_value,
        ignore_lease=ignore_lease,
    )


def delete_request(
    key: Key,
    range_end: Key | None = None,
    *,
    prefix: bool = False,
    from_key: bool = False,
    prev_kv: bool = False,
) -> pb.DeleteRangeRequest:
    return pb.DeleteRangeRequest(
        key=to_bytes(key),
        range_end=resolve_range_end(key, range_end, prefix, from_key),
        prev_kv=prev_kv,
    )


def get(key: Key, range_end: Key | None = None, **options: object) -> pb.RequestOp:
    """A range operation inside a txn; takes the options of :func:`range_request`."""
    return pb.RequestOp(request_range=range_request(key, range_end, **options))  # type: ignore[arg-type]


def put(key: Key, value: Key = b"", **options: object) -> pb.RequestOp:
    """A put operation inside a txn; takes the options of :func:`put_request`."""
    return pb.RequestOp(request_put=put_request(key, value, **options))  # type: ignore[arg-type]


def delete(key: Key, range_end: Key | None = None, **options: object) -> pb.RequestOp:
    """A delete operation inside a txn; takes the options of :func:`delete_request`."""
    return pb.RequestOp(request_delete_range=delete_request(key, range_end, **options))  # type: ignore[arg-type]


def nested(txn: Txn) -> pb.RequestOp:
    """A txn as an operation of another txn."""
    return pb.RequestOp(request_txn=txn.request())


class Txn:
    """``when(compares).then(ops).otherwise(ops)``, then ``await commit()``.

    Each clause may be given once, in that order, like etcd's clientv3 Txn.
    """

    def __init__(self, commit: Callable[[pb.TxnRequest], Awaitable[pb.TxnResponse]] | None) -> None:
        self._commit = commit
        self._compare: list[pb.Compare] = []
        self._success: list[pb.RequestOp] = []
        self._failure: list[pb.RequestOp] = []
        self._stage = 0

    def _advance(self, stage: int, name: str) -> None:
        if self._stage >= stage:
            raise ValueError(f"Txn.{name}() called twice or out of order")
        self._stage = stage

    def when(self, *compares: pb.Compare) -> Txn:
        self._advance(1, "when")
        self._compare.extend(compares)
        return self

    def then(self, *ops: pb.RequestOp) -> Txn:
        self._advance(2, "then")
        self._success.extend(ops)
        return self

    def otherwise(self, *ops: pb.RequestOp) -> Txn:
        self._advance(3, "otherwise")
        self._failure.extend(ops)
        return self

    def request(self) -> pb.TxnRequest:
        return pb.TxnRequest(compare=self._compare, success=self._success, failure=self._failure)

    async def commit(self) -> pb.TxnResponse:
        if self._commit is None:
            raise ValueError("a txn built for nesting has no client to commit to")
        return await self._commit(self.request())


def txn() -> Txn:
    """A txn to nest inside another with :func:`nested`."""
    return Txn(None)
