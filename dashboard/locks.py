"""The Control plane page's data: lease locks, their holders, fencing tokens and standbys.

Three prefixes are mirrored by list-then-watch (no polling):

- ``/registry/leases/`` the lock records (:mod:`election.record`); a record
  in Kubernetes' Lease shape (``spec.holderIdentity``) is a node heartbeat;
- ``/registry/fencing/`` whose mod_revision is the holder's fencing token;
- ``/registry/leasecandidates/`` every contender's candidacy
  (:mod:`election.candidate`): the standbys are the candidates but the holder.

"Renewed ago" is measured on this dashboard's own monotonic clock from when
it saw the record last change, never from the record's wall-clock stamps
(as the election itself judges a lock).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from dashboard.hub import Hub, Update
from election import CANDIDATE_PREFIX
from election.record import FENCE_PREFIX, RECORD_PREFIX
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client, CompactedError, EtcdError

log = logging.getLogger(__name__)

RETRY_PAUSE = 1.0
# Keys one mirror holds at most; past that the rest are ignored (and the page says so).
MAX_KEYS = 10_000


@dataclass
class Entry:
    value: bytes
    mod_revision: int
    observed_at: float  # local monotonic time the value last changed


class PrefixMirror:
    """A key prefix's current values, kept by list then watch; re-lists after compaction."""

    def __init__(self, client: Client, prefix: str, on_change: Callable[[], None]) -> None:
        self.client = client
        self.prefix = prefix
        self.on_change = on_change
        self.entries: dict[str, Entry] = {}
        self.truncated = False
        self.synced = anyio.Event()

    def _set(self, key: str, value: bytes, mod_revision: int) -> None:
        old = self.entries.get(key)
        if old is not None and old.value == value:
            old.mod_revision = mod_revision
            return
        if old is None and len(self.entries) >= MAX_KEYS:
            self.truncated = True
            return
        self.entries[key] = Entry(value, mod_revision, time.monotonic())

    async def _list_and_watch(self) -> None:
        response = await self.client.get(self.prefix, prefix=True, limit=MAX_KEYS)
        listed = {kv.key.decode(errors="replace"): kv for kv in response.kvs}
        for key in [k for k in self.entries if k not in listed]:
            del self.entries[key]
        for key, kv in listed.items():
            self._set(key, kv.value, kv.mod_revision)
        self.truncated = response.more
        self.synced.set()
        self.on_change()
        start = response.header.revision + 1
        async with self.client.watch(self.prefix, prefix=True, start_revision=start) as watch:
            async for batch in watch:
                for event in batch.events:
                    key = event.kv.key.decode(errors="replace")
                    if event.type == kv_pb2.Event.DELETE:
                        self.entries.pop(key, None)
                    else:
                        self._set(key, event.kv.value, event.kv.mod_revision)
                if batch.events:
                    self.on_change()

    async def run(self) -> None:
        while True:
            try:
                await self._list_and_watch()
            except CompactedError as error:
                log.info("%s: %s; listing again", self.prefix, error)
                continue
            except EtcdError as error:
                log.info("%s: %s; listing again", self.prefix, error)
            await anyio.sleep(RETRY_PAUSE)  # the store is unreachable for now


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class LockMonitor:
    """Publishes ``locks`` updates whenever a record, fence or candidacy changes."""

    def __init__(self, client: Client, hub: Hub) -> None:
        self.hub = hub
        self.records = PrefixMirror(client, RECORD_PREFIX, self._changed)
        self.fences = PrefixMirror(client, FENCE_PREFIX, self._changed)
        self.candidates = PrefixMirror(client, CANDIDATE_PREFIX, self._changed)
        hub.add_source(lambda: [Update("locks", self.view())])

    def _changed(self) -> None:
        self.hub.publish("locks", self.view())

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            for mirror in (self.records, self.fences, self.candidates):
                tasks.start_soon(mirror.run)

    def _candidates_of(self, namespace: str, lock: str) -> list[str]:
        """Identities contending for ``namespace/lock``."""
        found = []
        for key, entry in self.candidates.entries.items():
            data = _json(entry.value) or {}
            spec = data.get("spec") or {}
            name = str((data.get("metadata") or {}).get("name", ""))
            if key.startswith(f"{CANDIDATE_PREFIX}{namespace}/") and spec.get("leaseName") == lock:
                found.append(name.removeprefix(f"{lock}-"))
        return sorted(found)

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        locks, heartbeats, unreadable = [], [], []
        for key, entry in sorted(self.records.entries.items()):
            namespace, _, name = key[len(RECORD_PREFIX) :].partition("/")
            data = _json(entry.value)
            ago = round(now - entry.observed_at, 2)
            if data is None:
                unreadable.append(key)
            elif isinstance(data.get("spec"), dict):  # a Kubernetes Lease: a node heartbeat
                spec = data["spec"]
                heartbeats.append(
                    {
                        "namespace": namespace,
                        "name": name,
                        "holder": str(spec.get("holderIdentity", "")),
                        "lease_duration": spec.get("leaseDurationSeconds"),
                        "renew_time": spec.get("renewTime", ""),
                        "renewed_ago": ago,
                    }
                )
            else:
                holder = str(data.get("holderIdentity", ""))
                fence = self.fences.entries.get(f"{FENCE_PREFIX}{namespace}/{name}")
                candidates = self._candidates_of(namespace, name)
                duration = data.get("leaseDurationSeconds")
                expired = bool(holder) and isinstance(duration, int | float) and ago > duration
                locks.append(
                    {
                        "namespace": namespace,
                        "name": name,
                        "holder": holder,
                        "expired": expired,
                        "lease_duration": duration,
                        "transitions": data.get("leaderTransitions"),
                        "acquire_time": data.get("acquireTime", ""),
                        "renew_time": data.get("renewTime", ""),
                        "renewed_ago": ago,
                        "fencing_token": fence.mod_revision if fence is not None else None,
                        "candidates": candidates,
                        "standbys": [c for c in candidates if c != holder],
                    }
                )
        return {
            "locks": locks,
            "heartbeats": heartbeats,
            "unreadable": unreadable,
            "synced": all(m.synced.is_set() for m in (self.records, self.fences, self.candidates)),
            "truncated": any(m.truncated for m in (self.records, self.fences, self.candidates)),
        }
