"""Short pauses of the cyclic garbage collector, however large the state grows.

A full collection scans every object the collector tracks, and the key index holds
several for every key written since the last compaction. Under ``etcdctl check perf
--load l`` (150,000 keys a run, never compacted) full collections held every member's
loop 0.4-0.9 s at 1.1-2.0 million objects, found no garbage, and cost the cluster its
leader. Go's collector runs beside the program; CPython 3.11's stops it.

What survives a slow full collection (``FREEZE_AFTER_SECONDS`` or more) is long-lived:
it is frozen (``gc.freeze``: out of the collector's sight, still freed by reference
counting), so the next full collection scans only what came since. The price: garbage
cycles among objects frozen earlier are never collected. A closed watch stream used to
leave ~55 objects in cycles (its tasks' CancelledError, their tracebacks and frames; now
none, see ``kvstore.rpc.connection._forget_task``): freezing after every full collection
froze the cycles of whatever was open at that moment, and 30,000 watch connections opened
and closed in turn grew a member by 4 MB, without end. Freezing only
after a slow collection freezes when the tracked heap has grown (the key index), so
under churn alone nothing is frozen and the cycles are collected. When the heap has
shrunk to half its peak (a compaction dropped history), the frozen set is thawed for
one full collection that sees everything, at a moment it is cheap. Thawing as it grows
would bring back the very pause: 0.8-1.1 s at 1.9 million objects.

How large the frozen set is, is judged by the heap: ``sys.getallocatedblocks()``, the
objects the interpreter's allocator holds, nearly all of them frozen. Counting the
frozen set itself (``gc.get_freeze_count``) walks a linked list through all of it, an
object at a time in no order memory likes: 0.5 s at 4 million objects, 1.5 s at 12
million, and it held members' loops 0.5-0.7 s once their key index passed 1.5 GB. The
allocator's count visits one header per 4 KiB pool instead (3 ms at 2 GB). It is read
at most every ``COUNT_INTERVAL_SECONDS``, as full collections come many times a second
when little is left unfrozen.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

THAW_SHRINK = 2
"""The heap shrinks this many times from its peak before one full collection sees it
all."""
SLOW_COLLECTION_SECONDS = 0.1
"""A collection this long is logged."""
FREEZE_AFTER_SECONDS = 0.01
"""A full collection that took this much CPU freezes what it leaves (a tenth of a
heartbeat)."""
COUNT_INTERVAL_SECONDS = 1.0
"""The heap is measured at most this often (a thaw waits that long at most)."""


class PauseKeeper:
    """Freezes what each slow full collection leaves (installed as a ``gc`` callback)."""

    def __init__(
        self,
        count_interval: float = COUNT_INTERVAL_SECONDS,
        freeze_after: float = FREEZE_AFTER_SECONDS,
    ) -> None:
        self._freeze_after = freeze_after
        self._started = 0.0
        self._started_cpu = 0.0
        self._count_interval = count_interval
        self._counted_at = time.monotonic()
        self._peak = sys.getallocatedblocks()
        self._thawed = False
        self.freezes = 0
        self.counts = 0
        self.thaws = 0

    def install(self) -> None:
        gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        full = info["generation"] == 2
        if phase == "start":
            self._started = time.monotonic()
            if full:
                self._started_cpu = time.thread_time()
            return
        took = time.monotonic() - self._started
        if took >= SLOW_COLLECTION_SECONDS:
            log.warning(
                "garbage collection of generation %d took %.0f ms (%d collected)",
                info["generation"],
                took * 1000,
                info["collected"],
            )
        if not full:
            return
        # Its CPU time, not the wall clock's: on a busy machine a quick collection the
        # kernel preempted would freeze the cycles of whatever is open at that moment.
        if time.thread_time() - self._started_cpu >= self._freeze_after:
            gc.freeze()
            self.freezes += 1
        now = time.monotonic()
        if not self._thawed and now - self._counted_at < self._count_interval:
            return
        self._counted_at = now
        self.counts += 1
        heap = sys.getallocatedblocks()
        if self._thawed:
            # That collection saw everything: a new peak to shrink from.
            self._thawed = False
            self._peak = heap
        elif heap * THAW_SHRINK <= self._peak:
            # The next full collection sees everything, while that is cheap.
            gc.unfreeze()
            self._thawed = True
            self.thaws += 1
        else:
            self._peak = max(self._peak, heap)
