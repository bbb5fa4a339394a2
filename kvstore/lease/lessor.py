"""The lessor: leases, their attached keys, and expiry on the primary.

Deterministic state (which leases exist, their TTLs, checkpointed remaining
TTLs and attached keys) changes only through the apply path: ``grant``,
``revoke``, ``checkpoint``, ``attach``/``detach``. Expiry is local to the
primary (the Raft leader): only it keeps real deadlines, reports expired
leases (the driver proposes their revokes through Raft), renews on keepalive
and produces checkpoints. Time comes from an injected monotonic clock, so
tests control it without sleeping. The MVCC store persists leases in its own
backend transaction; this module does no I/O.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvstore.errors import (
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NotPrimaryError,
)

log = logging.getLogger(__name__)

NO_LEASE = 0
MAX_LEASE_TTL = 9_000_000_000
"""etcd's MaxLeaseTTL (seconds): a larger TTL is rejected."""
DEFAULT_MIN_TTL = 2
"""etcd's minimum TTL for election 1000 ms / heartbeat 100 ms: ceil(1.5 * election timeout)."""
DEFAULT_CHECKPOINT_INTERVAL = 300.0
"""etcd's default lease checkpoint interval (5 min)."""
EXPIRED_RETRY_INTERVAL = 3.0
"""An expired lease is reported again only after this many seconds (etcd: 3 s)."""
MAX_EXPIRED_PER_CALL = 1000
"""Bound on the leases one ``expired()`` call reports (etcd revokes at most 1000/s)."""
_FOREVER = math.inf


class LeaseExpiringError(Exception):
    """The lease is past its deadline and its revoke not applied yet (not sent on the wire:
    a keepalive waits for the revoke instead, as etcd's does)."""


@dataclass(slots=True)
class Lease:
    """One lease. ``expiry`` is meaningful only on the primary."""

    id: int
    ttl: int
    remaining_ttl: int = 0
    """Checkpointed remaining TTL in seconds; 0 when never checkpointed since grant/renew."""
    expiry: float = _FOREVER
    keys: set[bytes] = field(default_factory=set)
    heap_time: float = _FOREVER
    """When the expiry heap next looks at this lease (expiry, or a retry after reporting)."""
    checkpoint_at: float = _FOREVER
    """When the primary next checkpoints this lease's remaining TTL."""

    def remaining(self, now: float) -> float:
        """Seconds left before expiry (inf when not primary)."""
        return self.expiry - now


class Lessor:
    """Leases of one member.

    ``clock`` is a monotonic clock in seconds. ``min_ttl`` is the minimum TTL a
    grant gets (etcd raises smaller TTLs to it).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        min_ttl: int = DEFAULT_MIN_TTL,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> None:
        self._clock = clock
        self.min_ttl = min_ttl
        self.checkpoint_interval = checkpoint_interval
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[bytes, int] = {}
        self._primary = False
        # Min-heaps of (deadline, lease id); stale entries are skipped lazily.
        self._expiry_heap: list[tuple[float, int]] = []
        self._checkpoint_heap: list[tuple[float, int]] = []
        # Leases whose checkpointed remaining TTL a renew cleared; the driver proposes
        # a checkpoint with 0 so every member forgets it too (as etcd does).
        self._pending_clear: set[int] = set()

    # ----- deterministic state (apply path) -----

    @property
    def is_primary(self) -> bool:
        return self._primary

    def lookup(self, lease_id: int) -> Lease | None:
        """The lease, or None."""
        return self._leases.get(lease_id)

    def leases(self) -> list[Lease]:
        """All leases, by ID."""
        return [self._leases[i] for i in sorted(self._leases)]

    def grant(self, lease_id: int, ttl: int) -> Lease:
        """Create a lease (apply path). The ID must be chosen by the proposer (non-zero)."""
        if lease_id == NO_LEASE:
            raise LeaseNotFoundError()
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        if lease_id in self._leases:
            raise LeaseExistsError()
        lease = Lease(lease_id, max(ttl, self.min_ttl))
        self._leases[lease_id] = lease
        if self._primary:
            self._refresh(lease, 0.0)
        return lease

    def restore_lease(self, lease_id: int, ttl: int, remaining_ttl: int) -> Lease:
        """Recreate a persisted lease on open (no TTL clamping, no errors)."""
        lease = Lease(lease_id, ttl, remaining_ttl)
        self._leases[lease_id] = lease
        if self._primary:
            self._refresh(lease, 0.0)
        return lease

    def revoke(self, lease_id: int) -> list[bytes]:
        """Remove a lease (apply path); returns its keys, sorted, for the store to delete."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise LeaseNotFoundError()
        for key in lease.keys:
            if self._key_lease.get(key) == lease_id:
                del self._key_lease[key]
        self._pending_clear.discard(lease_id)
        return sorted(lease.keys)

    def attach(self, lease_id: int, key: bytes) -> None:
        """Attach ``key`` to a lease (the lease must exist)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        lease.keys.add(key)
        self._key_lease[key] = lease_id

    def detach(self, lease_id: int, key: bytes) -> None:
        """Detach ``key`` from its lease, if both still exist."""
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)
        if self._key_lease.get(key) == lease_id:
            del self._key_lease[key]

    def lease_of(self, key: bytes) -> int:
        """The lease ``key`` is attached to, or NO_LEASE."""
        return self._key_lease.get(key, NO_LEASE)

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> None:
        """Record a lease's remaining TTL (apply path of a LeaseCheckpointRequest)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return  # revoked meanwhile: etcd ignores it too
        lease.remaining_ttl = remaining_ttl
        if self._primary:
            self._refresh(lease, 0.0)

    # ----- primary-only, clock-driven -----

    def _base_ttl(self, lease: Lease) -> int:
        return lease.remaining_ttl if lease.remaining_ttl > 0 else lease.ttl

    def _refresh(self, lease: Lease, extend: float) -> None:
        now = self._clock()
        lease.expiry = now + extend + self._base_ttl(lease)
        lease.heap_time = lease.expiry
        heapq.heappush(self._expiry_heap, (lease.expiry, lease.id))
        if self.checkpoint_interval > 0 and lease.ttl > self.checkpoint_interval:
            lease.checkpoint_at = now + self.checkpoint_interval
            heapq.heappush(self._checkpoint_heap, (lease.checkpoint_at, lease.id))

    def promote(self, extend: float) -> None:
        """Become primary: every lease gets ``extend`` extra seconds so none expires early."""
        self._primary = True
        self._expiry_heap.clear()
        self._checkpoint_heap.clear()
        for lease in self._leases.values():
            self._refresh(lease, extend)
        log.info("lessor promoted", extra={"leases": len(self._leases), "extend": extend})

    def demote(self) -> None:
        """Stop being primary: forget deadlines (leases never expire on a follower)."""
        self._primary = False
        for lease in self._leases.values():
            lease.expiry = lease.heap_time = lease.checkpoint_at = _FOREVER
        self._expiry_heap.clear()
        self._checkpoint_heap.clear()
        self._pending_clear.clear()

    def renew(self, lease_id: int) -> int:
        """Keepalive on the primary: deadline = now + TTL. Returns the TTL.

        A lease past its deadline cannot be renewed: ``LeaseExpiringError`` until its
        revoke is applied, ``LeaseNotFoundError`` after.
        """
        if not self._primary:
            raise NotPrimaryError()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        if lease.remaining(self._clock()) <= 0:
            raise LeaseExpiringError()
        if lease.remaining_ttl > 0:
            lease.remaining_ttl = 0
            self._pending_clear.add(lease_id)
        self._refresh(lease, 0.0)
        return lease.ttl

    def remaining_ttl(self, lease_id: int) -> int:
        """Whole seconds left (etcd truncates); the granted TTL when not primary.

        0 once the deadline has passed: the lease (and its keys) lives on until
        its revoke is applied, and a negative TTL would read as -1, "not found".
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        if not self._primary:
            return self._base_ttl(lease)
        return max(0, int(lease.remaining(self._clock())))

    def expired(self, limit: int = MAX_EXPIRED_PER_CALL) -> list[int]:
        """IDs of expired leases (primary only) for the driver to revoke through Raft.

        A reported lease is reported again after EXPIRED_RETRY_INTERVAL if its
        revoke has not been applied by then.
        """
        assert limit > 0
        if not self._primary:
            return []
        now = self._clock()
        out: list[int] = []
        heap = self._expiry_heap
        while heap and len(out) < limit:
            deadline, lease_id = heap[0]
            if deadline > now:
                break
            heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is None or lease.heap_time != deadline or lease.expiry > now:
                continue  # stale heap entry (revoked or renewed since)
            out.append(lease_id)
            lease.heap_time = now + EXPIRED_RETRY_INTERVAL
            heapq.heappush(heap, (lease.heap_time, lease_id))
        return out

    def due_checkpoints(self, limit: int = MAX_EXPIRED_PER_CALL) -> list[tuple[int, int]]:
        """(lease id, remaining TTL) pairs the primary should propose as checkpoints."""
        assert limit > 0
        if not self._primary:
            return []
        now = self._clock()
        out: list[tuple[int, int]] = []
        for lease_id in sorted(self._pending_clear):
            if len(out) >= limit:
                break
            if lease_id in self._leases:
                out.append((lease_id, 0))
        self._pending_clear.difference_update(i for i, _ in out)
        heap = self._checkpoint_heap
        while heap and len(out) < limit and heap[0][0] <= now:
            at, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is None or lease.expiry == _FOREVER or lease.checkpoint_at != at:
                continue  # revoked, demoted, or rescheduled since
            remaining = int(lease.remaining(now))
            if remaining > 0:
                out.append((lease_id, remaining))
        return out

    def keys_of(self, lease_id: int) -> list[bytes]:
        """Keys attached to a lease, sorted."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        return sorted(lease.keys)

    def reset(self, leases: Iterable[tuple[int, int, int]]) -> None:
        """Replace all state with persisted (id, ttl, remaining_ttl) triples (restore)."""
        self._leases.clear()
        self._key_lease.clear()
        self._expiry_heap.clear()
        self._checkpoint_heap.clear()
        self._pending_clear.clear()
        for lease_id, ttl, remaining in leases:
            self.restore_lease(lease_id, ttl, remaining)
