"""The client's exceptions: one small tree, mapped from gRPC status and etcd's messages.

etcd reports most failures as a gRPC status whose details carry a fixed
message (``etcdserver: no leader``, ``mvcc: required revision has been
compacted``...). :func:`from_rpc_error` turns those into the typed exceptions
below so callers can ``except CompactedError`` instead of parsing strings.
Our server sends the same codes and messages (``kvstore.rpctypes``).
"""

from __future__ import annotations

import asyncio

import grpc

from kvstore.rpctypes import (
    ERR_AUTH_FAILED,
    ERR_AUTH_NOT_ENABLED,
    ERR_AUTH_OLD_REVISION,
    ERR_COMPACTED,
    ERR_FUTURE_REV,
    ERR_INVALID_AUTH_TOKEN,
    ERR_KEY_NOT_FOUND,
    ERR_LEADER_CHANGED,
    ERR_LEASE_EXISTS,
    ERR_LEASE_NOT_FOUND,
    ERR_NO_LEADER,
    ERR_PERMISSION_DENIED,
    ERR_TIMEOUT,
    ERR_USER_EMPTY,
)


class EtcdError(Exception):
    """Base of every error the client raises. ``code`` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UnavailableError(EtcdError):
    """No endpoint could serve the call (connection refused, member stopped, ...).

    For a write this is ambiguous: the write may or may not have been applied.
    """

    code = grpc.StatusCode.UNAVAILABLE


class NoLeaderError(UnavailableError):
    """The member has no Raft leader (``etcdserver: no leader``)."""


class DeadlineExceededError(EtcdError):
    """The per-call deadline passed; the operation may or may not have been applied."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RevisionError(EtcdError):
    """Base for revisions the store can no longer or not yet serve."""

    code = grpc.StatusCode.OUT_OF_RANGE


class CompactedError(RevisionError):
    """The requested revision was compacted away. ``compact_revision`` is set for watches."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class FutureRevisionError(RevisionError):
    """The requested revision is newer than the store's current revision."""


class LeaseNotFoundError(EtcdError):
    code = grpc.StatusCode.NOT_FOUND


class LeaseExistsError(EtcdError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class KeyNotFoundError(EtcdError):
    """A put with ignore_value/ignore_lease named a key that does not exist."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidRequestError(EtcdError):
    """The request was malformed: too large, too many txn ops, duplicate key, empty key..."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhaustedError(EtcdError):
    """Space quota exceeded or too many requests."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class AuthError(EtcdError):
    """Base of the access-control failures."""


class AuthFailedError(AuthError):
    """Wrong user name or password (``etcdserver: authentication failed, ...``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDeniedError(AuthError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UserEmptyError(PermissionDeniedError):
    """Auth is enabled and the call named no user (no token)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidTokenError(PermissionDeniedError):
    """The member does not accept the token (expired, or its user changed): log in again."""

    code = grpc.StatusCode.UNAUTHENTICATED


class AuthOldRevisionError(PermissionDeniedError):
    """The auth store changed since the token was issued: log in again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class AuthNotEnabledError(AuthError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class WatchCanceledError(EtcdError):
    """The server cancelled a watch for a reason other than compaction."""

    code = grpc.StatusCode.CANCELLED


_BY_MESSAGE: dict[str, type[EtcdError]] = {
    ERR_NO_LEADER: NoLeaderError,
    ERR_COMPACTED: CompactedError,
    ERR_FUTURE_REV: FutureRevisionError,
    ERR_LEASE_NOT_FOUND: LeaseNotFoundError,
    ERR_LEASE_EXISTS: LeaseExistsError,
    ERR_KEY_NOT_FOUND: KeyNotFoundError,
    ERR_TIMEOUT: UnavailableError,
    ERR_LEADER_CHANGED: UnavailableError,
    ERR_AUTH_FAILED: AuthFailedError,
    ERR_USER_EMPTY: UserEmptyError,
    ERR_INVALID_AUTH_TOKEN: InvalidTokenError,
    ERR_AUTH_OLD_REVISION: AuthOldRevisionError,
    ERR_AUTH_NOT_ENABLED: AuthNotEnabledError,
    ERR_PERMISSION_DENIED: PermissionDeniedError,
}

RELOGIN_MESSAGES = frozenset({ERR_INVALID_AUTH_TOKEN, ERR_AUTH_OLD_REVISION, ERR_USER_EMPTY})
"""Failures after which a client with a user and password logs in again and retries
(etcd's clientv3 does the same)."""

_BY_CODE: dict[grpc.StatusCode, type[EtcdError]] = {
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.OUT_OF_RANGE: RevisionError,
    grpc.StatusCode.NOT_FOUND: EtcdError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDeniedError,
}


def from_status(code: grpc.StatusCode, details: str) -> EtcdError:
    """Build the typed exception for a gRPC status and its details string."""
    cls = _BY_MESSAGE.get(details) or _BY_CODE.get(code, EtcdError)
    error = cls(details or code.name)
    error.code = code
    return error


def from_rpc_error(error: grpc.aio.AioRpcError) -> EtcdError:
    return from_status(error.code(), error.details() or "")


def cancelled_inside_grpc() -> bool:
    """Whether the ``CancelledError`` being handled was raised by grpc.aio, not a cancellation
    of the current task.

    grpc.aio sometimes ends a call by cancelling the task it runs the call in
    (seen when members stall and resume under a client's deadlines), and the
    caller awaiting that call then gets a bare ``CancelledError``. Nobody
    cancelled the caller, so no cancel scope owns it: propagated, it would end
    the caller's task group as if asked to stop (a controller would exit with
    status 0). It is a failed call, not a cancellation.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
