"""Errors raised by the MVCC store, the watch hub and the lessor.

Each error carries the gRPC status code and the exact message etcd 3.5 returns
for the same failure, so the server maps them 1:1 onto a gRPC status.
"""

from __future__ import annotations

import grpc

from kvstore.rpctypes import (
    ERR_COMPACTED,
    ERR_CORRUPT,
    ERR_DUPLICATE_KEY,
    ERR_EMPTY_KEY,
    ERR_FUTURE_REV,
    ERR_KEY_NOT_FOUND,
    ERR_LEASE_EXISTS,
    ERR_LEASE_NOT_FOUND,
    ERR_LEASE_PROVIDED,
    ERR_LEASE_TTL_TOO_LARGE,
    ERR_NO_SPACE,
    ERR_NOT_LEADER,
    ERR_TOO_MANY_OPS,
    ERR_VALUE_PROVIDED,
)


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
    message = ERR_EMPTY_KEY


class KeyNotFoundError(EtcdError):
    """ignore_value/ignore_lease on a missing key; or an empty txn op."""

    code = _INVALID
    message = ERR_KEY_NOT_FOUND


class ValueProvidedError(EtcdError):
    """ignore_value together with a value."""

    code = _INVALID
    message = ERR_VALUE_PROVIDED


class LeaseProvidedError(EtcdError):
    """ignore_lease together with a lease."""

    code = _INVALID
    message = ERR_LEASE_PROVIDED


class TooManyOpsError(EtcdError):
    """A txn with more than max-txn-ops compares or ops in a branch."""

    code = _INVALID
    message = ERR_TOO_MANY_OPS


class DuplicateKeyError(EtcdError):
    """A txn that puts a key twice, or puts and deletes it."""

    code = _INVALID
    message = ERR_DUPLICATE_KEY


class CompactedError(EtcdError):
    """A revision at or below the compacted one."""

    code = _RANGE
    message = ERR_COMPACTED


class FutureRevError(EtcdError):
    """A revision beyond the current one."""

    code = _RANGE
    message = ERR_FUTURE_REV


class CorruptError(EtcdError):
    """A write while a CORRUPT alarm is raised (members disagree on their data)."""

    code = grpc.StatusCode.DATA_LOSS
    message = ERR_CORRUPT


class NoSpaceError(EtcdError):
    """A write while the backend is over its quota (or a NOSPACE alarm is raised)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = ERR_NO_SPACE


class LeaseNotFoundError(EtcdError):
    """An unknown (or expired) lease."""

    code = grpc.StatusCode.NOT_FOUND
    message = ERR_LEASE_NOT_FOUND


class LeaseExistsError(EtcdError):
    """A grant of an ID already in use."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    message = ERR_LEASE_EXISTS


class LeaseTTLTooLargeError(EtcdError):
    """A TTL above MAX_LEASE_TTL."""

    code = _RANGE
    message = ERR_LEASE_TTL_TOO_LARGE


class NotPrimaryError(EtcdError):
    """A keepalive on a member that is not the lessor primary (the leader)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    message = ERR_NOT_LEADER


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
