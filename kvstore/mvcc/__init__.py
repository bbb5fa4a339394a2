"""MVCC key-value store with etcd semantics, its watch hub, on LMDB.

Names are loaded lazily so that ``kvstore.lease`` can import ``kvstore.errors``
without importing the store (which itself uses the lessor).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvstore.mvcc.store import MVCCStore
    from kvstore.mvcc.validate import validate_request
    from kvstore.mvcc.watch import WatchHub, WatchStream

__all__ = ["MVCCStore", "WatchHub", "WatchStream", "validate_request"]

_LAZY = {
    "MVCCStore": "kvstore.mvcc.store",
    "validate_request": "kvstore.mvcc.validate",
    "WatchHub": "kvstore.mvcc.watch",
    "WatchStream": "kvstore.mvcc.watch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)
