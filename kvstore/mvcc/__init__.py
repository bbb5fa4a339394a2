"""MVCC key-value store with etcd semantics, its watch hub, on LMDB."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvstore.lease.lessor import DEFAULT_MIN_TTL, Lessor
from kvstore.mvcc.store import MVCCStore
from kvstore.mvcc.validate import validate_request
from kvstore.mvcc.watch import DEFAULT_QUEUE_SIZE, WatchHub, WatchStream

__all__ = ["MVCCStore", "WatchHub", "WatchStream", "open_store", "validate_request"]


def open_store(
    path: Path | str,
    *,
    clock: Callable[[], float] = time.monotonic,
    min_lease_ttl: int = DEFAULT_MIN_TTL,
    watch_queue_size: int = DEFAULT_QUEUE_SIZE,
    **store_options: Any,
) -> tuple[MVCCStore, WatchHub]:
    """A store with its lessor (on ``clock``) and a watch hub fed by its writes."""
    store = MVCCStore(path, lessor=Lessor(clock, min_ttl=min_lease_ttl), **store_options)
    hub = WatchHub(store, queue_size=watch_queue_size)
    store.watchers = hub
    return store, hub
