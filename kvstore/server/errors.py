"""Server-side etcd errors and the one place that maps exceptions to gRPC status."""

from __future__ import annotations

import logging

import grpc

from kvstore.mvcc.errors import EtcdError

log = logging.getLogger(__name__)

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class NoLeaderError(EtcdError):
    code = _UNAVAILABLE
    message = "etcdserver: no leader"


class RequestTimeoutError(EtcdError):
    code = _UNAVAILABLE
    message = "etcdserver: request timed out"


class LeaderChangedError(EtcdError):
    code = _UNAVAILABLE
    message = "etcdserver: leader changed"


class StoppedError(EtcdError):
    code = _UNAVAILABLE
    message = "etcdserver: server stopped"


class RequestTooLargeError(EtcdError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    message = "etcdserver: request is too large"


class TooManyRequestsError(EtcdError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = "etcdserver: too many requests"


class NotCapableError(EtcdError):
    code = grpc.StatusCode.UNIMPLEMENTED
    message = "etcdserver: not capable"


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status (code, message) etcd returns for ``exc``."""
    if isinstance(exc, EtcdError):
        return exc.code, exc.message
    log.exception("unexpected error serving a request", exc_info=exc)
    return grpc.StatusCode.UNKNOWN, f"etcdserver: {exc}"
