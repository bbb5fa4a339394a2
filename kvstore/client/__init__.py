"""Async etcd v3 client with endpoint failover.

>>> async with Client(["127.0.0.1:2379"]) as client:
...     await client.put("greeting", "hello")
...     resp = await client.get("greeting")
"""

from kvstore.client import txn
from kvstore.client.client import Client
from kvstore.client.endpoints import TLSConfig
from kvstore.client.errors import (
    AuthError,
    AuthFailedError,
    AuthNotEnabledError,
    AuthOldRevisionError,
    CompactedError,
    DeadlineExceededError,
    EtcdError,
    FutureRevisionError,
    InvalidRequestError,
    InvalidTokenError,
    KeyNotFoundError,
    LeaseExistsError,
    LeaseNotFoundError,
    NoLeaderError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RevisionError,
    UnavailableError,
    UserEmptyError,
    WatchCanceledError,
)
from kvstore.client.lease import LeaseKeepAlive
from kvstore.client.txn import Txn, prefix_end
from kvstore.client.watch import Watch, WatchBatch

__all__ = [
    "AuthError",
    "AuthFailedError",
    "AuthNotEnabledError",
    "AuthOldRevisionError",
    "Client",
    "CompactedError",
    "DeadlineExceededError",
    "EtcdError",
    "FutureRevisionError",
    "InvalidRequestError",
    "InvalidTokenError",
    "KeyNotFoundError",
    "LeaseExistsError",
    "LeaseKeepAlive",
    "LeaseNotFoundError",
    "NoLeaderError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RevisionError",
    "TLSConfig",
    "Txn",
    "UnavailableError",
    "UserEmptyError",
    "Watch",
    "WatchBatch",
    "WatchCanceledError",
    "prefix_end",
    "txn",
]
