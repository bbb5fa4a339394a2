"""Errors raised by the MVCC store, the watch hub and the lessor.

Each error carries the gRPC status code and the exact message etcd 3.5 returns
for the same failure, so the server maps them 1:1 onto a gRPC status.
"""

from __future__ import annotations

import grpc


class EtcdError(Exception):
    """Base class: ``code`` and ``message`` are what goes on the wire."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    message: str = "etcdserver: unknown error"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EtcdError)
            and other.code == self.code
            and other.message == self.message
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))


_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_RANGE = grpc.StatusCode.OUT_OF_RANGE


class EmptyKeyError(EtcdError):
    """A request without a key."""

    code = _INVALID
    message = "etcdserver: key is not provided"


class KeyNotFoundError(EtcdError):
    """ignore_value/ignore_lease on a missing key; or an empty txn op."""

    code = _INVALID
    message = "etcdserver: key not found"


class ValueProvidedError(EtcdError):
    """ignore_value together with a value."""

    code = _INVALID
    message = "etcdserver: value is provided"


class LeaseProvidedError(EtcdError):
    """ignore_lease together with a lease."""

    code = _INVALID
    message = "etcdserver: lease is provided"


class TooManyOpsError(EtcdError):
    """A txn with more than max-txn-ops compares or ops in a branch."""

    code = _INVALID
    message = "etcdserver: too many operations in txn request"


class DuplicateKeyError(EtcdError):
    """A txn that puts a key twice, or puts and deletes it."""

    code = _INVALID
    message = "etcdserver: duplicate key given in txn request"


class CompactedError(EtcdError):
    """A revision at or below the compacted one."""

    code = _RANGE
    message = "etcdserver: mvcc: required revision has been compacted"


class FutureRevError(EtcdError):
    """A revision beyond the current one."""

    code = _RANGE
    message = "etcdserver: mvcc: required revision is a future revision"


class NoSpaceError(EtcdError):
    """A write while the backend is over its quota (or a NOSPACE alarm is raised)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = "etcdserver: mvcc: database space exceeded"


class LeaseNotFoundError(EtcdError):
    """An unknown (or expired) lease."""

    code = grpc.StatusCode.NOT_FOUND
    message = "etcdserver: requested lease not found"


class LeaseExistsError(EtcdError):
    """A grant of an ID already in use."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    message = "etcdserver: lease already exists"


class LeaseTTLTooLargeError(EtcdError):
    """A TTL above MAX_LEASE_TTL."""

    code = _RANGE
    message = "etcdserver: too large lease TTL"


class NotPrimaryError(EtcdError):
    """A keepalive on a member that is not the lessor primary (the leader)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    message = "etcdserver: not leader"


__all__ = [
    "CompactedError",
    "DuplicateKeyError",
    "EmptyKeyError",
    "EtcdError",
    "FutureRevError",
    "KeyNotFoundError",
    "LeaseExistsError",
    "LeaseNotFoundError",
    "LeaseProvidedError",
    "LeaseTTLTooLargeError",
    "NotPrimaryError",
    "TooManyOpsError",
    "ValueProvidedError",
]
