"""Server-side etcd errors and the one place that maps exceptions to gRPC status."""

from __future__ import annotations

import logging

import grpc

from election.errors import ElectionError
from kvstore.client.errors import EtcdError as ClientError
from kvstore.mvcc.errors import EtcdError
from kvstore.rpctypes import (
    ERR_LEADER_CHANGED,
    ERR_NO_LEADER,
    ERR_NOT_CAPABLE,
    ERR_REQUEST_TOO_LARGE,
    ERR_STOPPED,
    ERR_TIMEOUT,
    ERR_TOO_MANY_REQUESTS,
)

log = logging.getLogger(__name__)

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class NoLeaderError(EtcdError):
    code = _UNAVAILABLE
    message = ERR_NO_LEADER


class RequestTimeoutError(EtcdError):
    code = _UNAVAILABLE
    message = ERR_TIMEOUT


class LeaderChangedError(EtcdError):
    code = _UNAVAILABLE
    message = ERR_LEADER_CHANGED


class StoppedError(EtcdError):
    code = _UNAVAILABLE
    message = ERR_STOPPED


class RequestTooLargeError(EtcdError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    message = ERR_REQUEST_TOO_LARGE


class TooManyRequestsError(EtcdError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = ERR_TOO_MANY_REQUESTS


class NotCapableError(EtcdError):
    code = grpc.StatusCode.UNIMPLEMENTED
    message = ERR_NOT_CAPABLE


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status (code, message) etcd returns for ``exc``."""
    if isinstance(exc, EtcdError | ClientError):
        return exc.code, exc.message
    if isinstance(exc, ElectionError):
        # The lock and election services answer with the recipe's Go error text, as etcd does.
        return grpc.StatusCode.UNKNOWN, str(exc)
    log.exception("unexpected error serving a request", exc_info=exc)
    return grpc.StatusCode.UNKNOWN, f"etcdserver: {exc}"
