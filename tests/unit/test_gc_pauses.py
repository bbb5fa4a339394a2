"""What outlives a full collection is frozen; garbage cycles are still collected."""

# The keeper judges the frozen set by the heap (sys.getallocatedblocks): the tests grow
# the heap well past what it was (a list and an int per entry) and then shrink it.

from __future__ import annotations

import contextlib
import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from kvstore.server.gcpauses import PauseKeeper


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@contextlib.contextmanager
def _installed(count_interval: float, freeze_after: float = 0.0) -> Iterator[PauseKeeper]:
    # As a member starts: what is alive is frozen, then the keeper takes over.
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    k = PauseKeeper(count_interval, freeze_after)
    k.install()
    try:
        yield k
    finally:
        k.uninstall()
        gc.unfreeze()


@pytest.fixture
def keeper() -> Iterator[PauseKeeper]:
    """A keeper that freezes after, and measures the heap after, every full collection."""
    with _installed(count_interval=0.0) as k:
        yield k


def test_survivors_of_a_full_collection_are_frozen_and_new_cycles_still_collected(
    keeper: PauseKeeper,
) -> None:
    long_lived = [[i] for i in range(50_000)]  # lists: tracked by the collector
    before = gc.get_freeze_count()
    gc.collect()
    assert keeper.freezes == 1
    assert gc.get_freeze_count() >= before + len(long_lived)
    # A cycle made afterwards is garbage the next full collection finds.
    dead = _cycle()
    gc.collect()
    assert dead() is None


def test_frozen_cycles_are_collected_once_the_frozen_set_shrank(keeper: PauseKeeper) -> None:
    history = [[i + 1000] for i in range(sys.getallocatedblocks())]
    a, b = Node(), Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    gc.collect()  # everything alive is frozen, the cycle and the history with it
    del a, b
    gc.collect()  # frozen: not seen
    assert dead() is not None
    assert keeper.thaws == 0
    history.clear()  # a compaction drops most of what was frozen
    gc.collect()  # the heap is under half its peak: thawed
    assert keeper.thaws == 1
    gc.collect()  # this one sees everything
    assert dead() is None


def test_the_heap_is_measured_at_most_once_an_interval() -> None:
    with _installed(count_interval=3600.0) as keeper:
        history = [[i + 1000] for i in range(sys.getallocatedblocks())]
        for _ in range(5):
            gc.collect()
        assert keeper.freezes >= 5  # (and any the allocations above started)
        assert keeper.counts == 0
        history.clear()
        gc.collect()
        assert keeper.thaws == 0  # shrunk, but not measured before the interval ends


def _open_cycles(n: int) -> list[Node]:
    """n pairs that reference each other, each held from outside by its first node."""
    firsts = []
    for _ in range(n):
        a, b = Node(), Node()
        a.other, b.other = b, a
        firsts.append(a)
    return firsts


def test_quick_full_collections_freeze_nothing_and_collect_every_cycle() -> None:
    # Connection churn: cycles die young and the tracked heap stays small. Nothing
    # must be frozen, or the cycles of whatever was open at that moment would leak.
    with _installed(count_interval=0.0, freeze_after=3600.0) as keeper:
        frozen = gc.get_freeze_count()
        for _ in range(5):
            open_now = _open_cycles(1000)
            gc.collect()  # a full collection while they are open
            closed = [weakref.ref(a) for a in open_now]
            del open_now
            gc.collect()
            assert all(ref() is None for ref in closed)
        assert keeper.freezes == 0 and gc.get_freeze_count() == frozen


def test_a_slow_full_collection_freezes_what_it_leaves() -> None:
    with _installed(count_interval=3600.0, freeze_after=0.0) as keeper:
        open_now = _open_cycles(1000)
        gc.collect()
        assert keeper.freezes == 1
        closed = [weakref.ref(a) for a in open_now]
        del open_now
        gc.collect()  # frozen cycles are not seen (the price the module describes)
        assert all(ref() is not None for ref in closed)
