"""Watch hub: delivery, replay, compaction, filters, prev_kv, slow consumers, fragments."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.mvccpb import kv_pb2
from kvstore.mvcc import MVCCStore, WatchHub, open_store
from kvstore.mvcc import watch as watch_mod


def hub_of(store: MVCCStore) -> WatchHub:
    """The watch hub ``open_store`` attached to ``store``."""
    assert isinstance(store.watchers, WatchHub)
    return store.watchers


PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
W = rpc_pb2.WatchCreateRequest


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MVCCStore]:
    s = open_store(tmp_path / "s", watch_queue_size=8)[0]
    yield s
    s.close()


class Feeder:
    def __init__(self, store: MVCCStore) -> None:
        self.store = store
        self.index = 0

    def __call__(self, req: Any) -> Any:
        self.index += 1
        return self.store.apply(self.index, req)

    def put(self, key: bytes, value: bytes = b"v") -> Any:
        return self(rpc_pb2.PutRequest(key=key, value=value))

    def delete(self, key: bytes, end: bytes = b"") -> Any:
        return self(rpc_pb2.DeleteRangeRequest(key=key, range_end=end))


def events(resps: list[rpc_pb2.WatchResponse], wid: int) -> list[tuple[int, bytes, int]]:
    return [
        (ev.type, ev.kv.key, ev.kv.mod_revision)
        for r in resps
        if r.watch_id == wid
        for ev in r.events
    ]


def test_created_then_events_in_order(store: MVCCStore) -> None:
    f = Feeder(store)
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a"))
    created = s.get_nowait()
    assert created is not None and created.created and created.watch_id == wid
    assert created.header.revision == 1
    f.put(b"a")
    f.put(b"b")  # not watched
    f.delete(b"a")
    resps = s.drain()
    assert [r.header.revision for r in resps] == [2, 4]
    assert events(resps, wid) == [(PUT, b"a", 2), (DELETE, b"a", 4)]


def test_txn_events_of_one_revision_arrive_together(store: MVCCStore) -> None:
    f = Feeder(store)
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"p/", range_end=b"p0"))
    s.drain()
    t = rpc_pb2.TxnRequest()
    for k in (b"p/1", b"p/2", b"q"):
        t.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=k))
    f(t)
    resps = s.drain()
    assert len(resps) == 1
    assert events(resps, wid) == [(PUT, b"p/1", 2), (PUT, b"p/2", 2)]


def test_replay_from_past_revision_and_all_keys(store: MVCCStore) -> None:
    f = Feeder(store)
    for i in range(5):
        f.put(b"k%d" % i)  # revs 2..6
    f.delete(b"k1")  # rev 7
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"k", range_end=b"\x00", start_revision=4))
    resps = s.drain()
    assert resps[0].created
    assert events(resps, wid) == [
        (PUT, b"k2", 4),
        (PUT, b"k3", 5),
        (PUT, b"k4", 6),
        (DELETE, b"k1", 7),
    ]
    f.put(b"k9")  # now synced: delivered live
    assert events(s.drain(), wid) == [(PUT, b"k9", 8)]


def test_future_start_revision_waits(store: MVCCStore) -> None:
    f = Feeder(store)
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a", start_revision=4))
    s.drain()
    f.put(b"a")  # 2
    f.put(b"a")  # 3
    f.put(b"a")  # 4
    assert events(s.drain(), wid) == [(PUT, b"a", 4)]


def test_compacted_start_revision_cancels(store: MVCCStore) -> None:
    f = Feeder(store)
    for _ in range(5):
        f.put(b"a")
    f(rpc_pb2.CompactionRequest(revision=4))
    hub = hub_of(store)
    s = hub.new_stream()
    wid = s.watch(W(key=b"a", start_revision=2))
    [created] = s.drain()
    assert created.created
    # As etcd's: the periodic round cancels it; until then the watch is there.
    assert wid in s.watchers
    hub.sync_unsynced()
    [cancelled] = s.drain()
    assert cancelled.watch_id == wid and cancelled.canceled and cancelled.compact_revision == 4
    assert wid not in s.watchers
    # At the compacted revision itself it works.
    wid2 = s.watch(W(key=b"a", start_revision=4))
    assert [e[2] for e in events(s.drain(), wid2)] == [4, 5, 6]


def test_filters_and_prev_kv(store: MVCCStore) -> None:
    f = Feeder(store)
    s = hub_of(store).new_stream()
    noput = s.watch(W(key=b"a", filters=[W.NOPUT]))
    nodel = s.watch(W(key=b"a", filters=[W.NODELETE], prev_kv=True))
    s.drain()
    f.put(b"a", b"1")
    f.put(b"a", b"2")
    f.delete(b"a")
    resps = s.drain()
    assert events(resps, noput) == [(DELETE, b"a", 4)]
    evs = [ev for r in resps if r.watch_id == nodel for ev in r.events]
    assert [ev.kv.value for ev in evs] == [b"1", b"2"]
    assert not evs[0].HasField("prev_kv")  # a create has no previous version
    assert evs[1].prev_kv.value == b"1" and evs[1].prev_kv.mod_revision == 2


def test_range_watchers_of_one_prefix_each_get_what_they_asked_for(store: MVCCStore) -> None:
    """Single-event writes are handed to every plain watcher as one shared list; the
    watchers with filters or prev_kv get their own, and nobody sees another's."""
    f = Feeder(store)
    s = hub_of(store).new_stream()
    plain = [s.watch(W(key=b"p/", range_end=b"p0")) for _ in range(3)]
    everything = s.watch(W(key=b"p/", range_end=b"\0"))
    noput = s.watch(W(key=b"p/", range_end=b"p0", filters=[W.NOPUT]))
    prev = s.watch(W(key=b"p/", range_end=b"p0", prev_kv=True))
    outside = s.watch(W(key=b"q/", range_end=b"q0"))
    s.drain()
    f.put(b"p/a", b"1")
    f.put(b"p/a", b"2")
    f.put(b"z", b"3")
    f.delete(b"p/a")
    resps = s.drain()
    want = [(PUT, b"p/a", 2), (PUT, b"p/a", 3), (DELETE, b"p/a", 5)]
    for wid in plain:
        assert events(resps, wid) == want
    assert events(resps, everything) == [*want[:2], (PUT, b"z", 4), want[2]]
    assert events(resps, noput) == [(DELETE, b"p/a", 5)]
    assert events(resps, outside) == []
    with_prev = [ev for r in resps if r.watch_id == prev for ev in r.events]
    assert [ev.prev_kv.value for ev in with_prev] == [b"", b"1", b"2"]
    for wid in plain:
        plain_evs = [ev for r in resps if r.watch_id == wid for ev in r.events]
        assert not any(ev.HasField("prev_kv") for ev in plain_evs)


def test_a_drained_stream_catches_up_its_own_watchers_only(store: MVCCStore) -> None:
    f = Feeder(store)
    hub = hub_of(store)
    a, b = hub.new_stream(), hub.new_stream()  # queue_size 8
    wa = [a.watch(W(key=b"k", range_end=b"l")) for _ in range(4)]
    wb = [b.watch(W(key=b"k", range_end=b"l")) for _ in range(4)]
    a.drain()
    b.drain()
    for i in range(40):
        f.put(b"k%d" % (i % 5))
    assert hub.unsynced_count == 8
    got_a = a.drain()  # a's room back: a's watchers replay, b's stay behind
    assert len(a.unsynced) < 4
    assert len(b.unsynced) == 4
    while a.unsynced:
        hub.sync_unsynced(only=a)
        got_a.extend(a.drain())
    assert hub.unsynced_count == 4
    want = [(PUT, b"k%d" % (i % 5), i + 2) for i in range(40)]
    for wid in wa:
        assert events(got_a, wid) == want
    got_b = b.drain()
    while hub.unsynced_count:
        hub.sync_unsynced()
        got_b.extend(b.drain())
    for wid in wb:
        assert events(got_b, wid) == want


def test_a_draining_stream_catches_up_half_an_outbox_at_a_time(
    store: MVCCStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watchers left behind are caught up from the backend when their stream's outbox is
    half empty, not at every freed slot (with many watchers on one stream, a backend read
    for each message sent took a leader's whole loop)."""
    f = Feeder(store)
    hub = hub_of(store)
    s = hub.new_stream()  # queue_size 8
    wids = [s.watch(W(key=b"k", range_end=b"l")) for _ in range(40)]
    s.drain()
    for i in range(10):
        f.put(b"k%d" % (i % 3), b"%d" % i)
    assert hub.unsynced_count == 40
    reads: list[tuple[int, int]] = []
    events_between = store.events_between

    def counted(start: int, end: int) -> Iterator[tuple[int, kv_pb2.Event]]:
        reads.append((start, end))
        return events_between(start, end)

    monkeypatch.setattr(store, "events_between", counted)
    got = s.drain()
    while hub.unsynced_count:
        hub.sync_unsynced()  # the periodic round, as the server runs it
        got.extend(s.drain())
    for wid in wids:
        assert [e[2] for e in events(got, wid)] == list(range(2, 12))
    # 40 catch-up responses through an outbox of 8: a read per 4 freed slots, not per slot.
    assert len(reads) <= 40 // 4 + 2, len(reads)


def test_slow_consumer_never_blocks_and_catches_up(store: MVCCStore) -> None:
    f = Feeder(store)
    slow = hub_of(store).new_stream()  # queue_size 8
    fast = hub_of(store).new_stream()
    ws = slow.watch(W(key=b"k", range_end=b"l"))
    wf = fast.watch(W(key=b"k", range_end=b"l"))
    slow.drain()
    got_fast: list[rpc_pb2.WatchResponse] = []
    for i in range(100):
        f.put(b"k%d" % (i % 7), b"%d" % i)
        got_fast.extend(fast.drain())
    assert len(events(got_fast, wf)) == 100
    assert slow.pending() <= 8
    assert hub_of(store).unsynced_count == 1
    got_slow = slow.drain()  # draining lets the hub replay the backlog from the backend
    while hub_of(store).unsynced_count:
        assert hub_of(store).sync_unsynced() >= 0
        got_slow.extend(slow.drain())
    assert events(got_slow, ws) == events(got_fast, wf)
    f.put(b"k1")
    assert events(slow.drain(), ws) == [(PUT, b"k1", 102)]


def test_catch_up_is_bounded_per_round(store: MVCCStore) -> None:
    hub_of(store).batch_max_revs = 10
    f = Feeder(store)
    for _ in range(35):
        f.put(b"a")
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a", start_revision=2))
    got = s.drain()
    while hub_of(store).unsynced_count:
        hub_of(store).sync_unsynced()
        got.extend(s.drain())
    revs = [e[2] for e in events(got, wid)]
    assert revs == list(range(2, 37))
    assert all(len(r.events) <= 10 for r in got)


def test_fragmentation(store: MVCCStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_mod, "MAX_RESPONSE_BYTES", 1000)
    f = Feeder(store)
    s = hub_of(store).new_stream()
    frag = s.watch(W(key=b"a", range_end=b"b", fragment=True))
    whole = s.watch(W(key=b"a", range_end=b"b"))
    s.drain()
    t = rpc_pb2.TxnRequest()
    for i in range(10):
        t.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=b"a%d" % i, value=b"x" * 300))
    f(t)
    resps = s.drain()
    parts = [r for r in resps if r.watch_id == frag]
    assert len(parts) > 1
    assert [r.fragment for r in parts] == [True] * (len(parts) - 1) + [False]
    assert all(r.ByteSize() < 1000 + 400 for r in parts)
    assert events(parts, frag) == events(resps, whole)
    assert len([r for r in resps if r.watch_id == whole]) == 1


def test_progress_and_cancel(store: MVCCStore) -> None:
    f = Feeder(store)
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a", progress_notify=True))
    f.put(b"b")
    s.drain()
    s.request_progress()
    (p,) = s.drain()
    assert p.watch_id == -1 and p.header.revision == 2 and not p.events
    hub_of(store).progress_notify()
    (p,) = s.drain()
    assert p.watch_id == wid and p.header.revision == 2 and not p.events
    f.put(b"a")
    s.drain()
    hub_of(store).progress_notify()  # it got an event since the last tick: no progress
    assert s.drain() == []
    hub_of(store).progress_notify()
    (p,) = s.drain()
    assert p.watch_id == wid and p.header.revision == 3
    assert s.cancel(wid)
    (c,) = s.drain()
    assert c.canceled and c.watch_id == wid
    assert not s.cancel(wid)
    f.put(b"a")
    assert s.drain() == []


def test_no_progress_below_a_future_start_revision(store: MVCCStore) -> None:
    """A watch resumed on a member that lags (start revision beyond its current one)
    gets no progress notification until the member catches up: it would report a
    revision older than events the client has already seen elsewhere."""
    f = Feeder(store)
    f.put(b"x")  # revision 2
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a", progress_notify=True, start_revision=10))
    s.drain()
    s.request_progress()
    hub_of(store).progress_notify()
    assert s.drain() == []
    for _ in range(8):
        f.put(b"x")  # up to revision 10: the watch now waits for the next one only
    s.request_progress()
    (p,) = s.drain()
    assert p.watch_id == -1 and p.header.revision == 10
    hub_of(store).progress_notify()
    (p,) = s.drain()
    assert p.watch_id == wid and p.header.revision == 10


def test_duplicate_watch_id_refused(store: MVCCStore) -> None:
    s = hub_of(store).new_stream()
    assert s.watch(W(key=b"a", watch_id=7)) == 7
    assert s.watch(W(key=b"b", watch_id=7)) == -1
    resps = s.drain()
    assert resps[1].canceled and resps[1].created


async def test_async_consumer(store: MVCCStore) -> None:
    f = Feeder(store)
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a"))
    received: list[rpc_pb2.WatchResponse] = []

    async def consume() -> None:
        while (r := await s.recv()) is not None:
            received.append(r if isinstance(r, rpc_pb2.WatchResponse) else r.to_message())

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # let the consumer block on an empty stream
    f.put(b"a")
    f.put(b"a")
    s.close()
    await asyncio.wait_for(task, 5)
    assert events(received, wid) == [(PUT, b"a", 2), (PUT, b"a", 3)]


def test_restore_resyncs_watchers(store: MVCCStore, tmp_path: Path) -> None:
    other = open_store(tmp_path / "other")[0]
    g = Feeder(other)
    for _ in range(3):
        g.put(b"a", b"o")
    snap = other.snapshot(tmp_path / "snap")
    other.close()
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a"))
    s.drain()
    store.restore(snap)
    # The watcher was at revision 2; the new state's history from there is replayed.
    assert [e[2] for e in events(s.drain(), wid)] == [2, 3, 4]


def test_compaction_while_unsynced_cancels_with_compact_revision(store: MVCCStore) -> None:
    f = Feeder(store)
    s = hub_of(store).new_stream()  # queue_size 8
    wid = s.watch(W(key=b"a"))
    s.drain()
    for _ in range(20):
        f.put(b"a")  # revs 2..21: the outbox fills up, the watcher falls behind
    assert hub_of(store).unsynced_count == 1
    f(rpc_pb2.CompactionRequest(revision=15))
    got = []
    while (r := s.get_nowait()) is not None:
        got.append(r)
    assert [e[2] for e in events(got, wid)] == list(range(2, 10))
    assert not got[-1].canceled  # draining leaves the compacted watcher to the periodic round
    hub_of(store).sync_unsynced()
    got.extend(s.drain())
    assert got[-1].canceled and got[-1].compact_revision == 15
    assert hub_of(store).unsynced_count == 0 and wid not in s.watchers


def test_abort_drops_uncommitted_batch(store: MVCCStore) -> None:
    f = Feeder(store)
    f.put(b"a", b"1")
    store.commit()
    f.put(b"a", b"2")
    f.put(b"b", b"x")
    store.abort()
    assert store.consistent_index == 1 and store.current_revision == 2
    assert [kv.value for kv in store.range(rpc_pb2.RangeRequest(key=b"a")).kvs] == [b"1"]


def test_restore_to_a_newer_state_replays_only_what_is_new(
    store: MVCCStore, tmp_path: Path
) -> None:
    f = Feeder(store)
    f.put(b"a", b"1")  # rev 2, seen by the watcher below
    s = hub_of(store).new_stream()
    wid = s.watch(W(key=b"a", start_revision=2))
    assert [e[2] for e in events(s.drain(), wid)] == [2]
    f.put(b"b")  # rev 3: the watcher is synced through 3 without any event for it
    # A leader's snapshot: the same history, further ahead.
    ahead = open_store(tmp_path / "ahead")[0]
    g = Feeder(ahead)
    g.put(b"a", b"1")
    g.put(b"b")
    g.put(b"a", b"2")  # rev 4
    g(rpc_pb2.CompactionRequest(revision=4))  # history the watcher already saw is gone
    snap = ahead.snapshot(tmp_path / "snap")
    ahead.close()
    store.restore(snap)
    assert [e[2] for e in events(s.drain(), wid)] == [4]


def test_a_reply_with_encoded_events_is_the_response_byte_for_byte(store: MVCCStore) -> None:
    """The events one put fans out are encoded once; each watcher's reply is its header
    and watch ID followed by those bytes, exactly the response protobuf would encode."""
    f = Feeder(store)
    hub = hub_of(store)
    s = hub.new_stream()
    wids = [s.watch(W(key=b"k", range_end=b"l")) for _ in range(3)]
    s.drain()
    f.put(b"k1", b"x" * 300)  # an event longer than 127 bytes: a two-byte length
    replies = []
    while (r := s.reply_nowait()) is not None:
        replies.append(r)
    assert sorted(
        r.head.watch_id for r in replies if isinstance(r, watch_mod.EncodedWatchResponse)
    ) == sorted(wids)
    batches = {id(r.batch) for r in replies if isinstance(r, watch_mod.EncodedWatchResponse)}
    assert len(batches) == 1, "one encoding shared by every watcher"
    for r in replies:
        r.header.cluster_id = 7  # as the server fills in its header
        r.header.raft_term = 3
        full = r.to_message() if isinstance(r, watch_mod.EncodedWatchResponse) else r
        assert full.events[0].kv.value == b"x" * 300
        assert r.SerializeToString() == full.SerializeToString()
        assert rpc_pb2.WatchResponse.FromString(r.SerializeToString()) == full
