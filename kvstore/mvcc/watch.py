"""The watch hub: watchers on keys/ranges, fed synchronously by the apply path.

Model (etcd's watchableStore): a watcher is *synced* when it has seen every
revision up to the current one; the apply path hands each write's events to
synced watchers only (``notify``, synchronous, never blocks). A watcher that
starts in the past, or whose stream's bounded outbox is full, is *unsynced*:
``sync_unsynced`` catches it up from the backend, a bounded number of
revisions at a time, and moves it back to synced. A slow consumer therefore
never blocks writes or other watchers; it only falls back to replay.

One ``WatchStream`` is one gRPC Watch stream with one asyncio consumer that
awaits ``recv()``. Everything else is synchronous and deterministic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.mvccpb import kv_pb2
from kvstore._pb.wire import varint

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 128
"""Data responses a stream may hold before its watchers fall back to replay (etcd: 128)."""
MAX_CONTROL_PENDING = 1024
"""Bound on queued control responses (created/canceled/progress) per stream."""
MAX_RESPONSE_BYTES = 1536 * 1024
"""Fragmentation threshold: etcd's default max request size (1.5 MiB)."""
BATCH_MAX_REVS = 1000
"""Revisions one catch-up round reads from the backend (etcd: watchBatchMaxRevs)."""
PROGRESS_WATCH_ID = -1
"""watch_id of a stream-wide progress response (etcd's InvalidWatchID)."""

_PUT = kv_pb2.Event.PUT
_DELETE = kv_pb2.Event.DELETE
_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE

EMPTY_RANGE_REASON = "mvcc: watcher range is empty"
DUPLICATE_ID_REASON = "mvcc: duplicate watch ID provided on the WatchStream"


@dataclass(eq=False, slots=True)
class Watcher:
    """One watch. ``min_rev`` is the next revision it has to receive."""

    id: int
    stream: WatchStream
    key: bytes
    end: bytes | None  # None: the single key; b"": every key >= key
    min_rev: int
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    fragment: bool = False
    progress_notify: bool = False
    quiet: bool = True  # no events sent since the last progress tick (etcd skips busy ones)
    synced: bool = False
    active: bool = True

    def contains(self, key: bytes) -> bool:
        end = self.end
        if end is None:
            return key == self.key
        if end == b"":
            return key >= self.key
        return self.key <= key < end


_EVENTS_FIELD = rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].number
assert max(f.number for f in rpc_pb2.WatchResponse.DESCRIPTOR.fields) == _EVENTS_FIELD, (
    "events must be WatchResponse's last field: its bytes are appended to the rest"
)
_EVENTS_TAG = varint(_EVENTS_FIELD << 3 | 2)
"""WatchResponse.events, length-delimited."""


class EventBatch:
    """Events that go to watchers as they are: encoded once for all of them.

    One put fans out to every watcher of its key, and a catch-up read to every
    watcher of the same range from the same revision: their responses differ only
    in the watch ID and share these bytes.
    """

    __slots__ = ("_wire", "events")

    def __init__(self, events: list[kv_pb2.Event]) -> None:
        self.events = events
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        """The events as the repeated ``events`` field of a WatchResponse."""
        if self._wire is None:
            parts = []
            for ev in self.events:
                data = ev.SerializeToString()
                parts.append(_EVENTS_TAG + varint(len(data)) + data)
            self._wire = b"".join(parts)
        return self._wire


class EncodedWatchResponse:
    """A WatchResponse whose events are already encoded: ``head`` holds every other field
    (the server fills in its header) and the events follow it on the wire."""

    __slots__ = ("batch", "head")

    def __init__(self, head: rpc_pb2.WatchResponse, batch: EventBatch) -> None:
        self.head = head
        self.batch = batch

    @property
    def header(self) -> rpc_pb2.ResponseHeader:
        return self.head.header

    def SerializeToString(self) -> bytes:
        # The events field is the message's last: appending it keeps the field order.
        return self.head.SerializeToString() + self.batch.wire()

    def to_message(self) -> rpc_pb2.WatchResponse:
        resp = rpc_pb2.WatchResponse()
        resp.CopyFrom(self.head)
        resp.events.extend(self.batch.events)
        return resp


WatchReply = rpc_pb2.WatchResponse | EncodedWatchResponse
"""What a stream hands its consumer: a response, or one with its events encoded."""


@dataclass(slots=True)
class _Data:
    """A queued data response; the protobuf is built when the consumer takes it."""

    watch_id: int
    revision: int
    batch: EventBatch
    fragment: bool


@dataclass(eq=False)
class WatchStream:
    """The watchers and the bounded outbox of one Watch stream."""

    hub: WatchHub
    queue_size: int
    watchers: dict[int, Watcher] = field(default_factory=dict)
    # This stream's share of the hub's unsynced group: a stream that drains catches up
    # its own watchers without looking at every other stream's.
    unsynced: dict[Watcher, None] = field(default_factory=dict)
    _out: deque[_Data | rpc_pb2.WatchResponse] = field(default_factory=deque)
    _ready: deque[WatchReply] = field(default_factory=deque)
    _data_pending: int = 0
    _control_pending: int = 0
    _next_id: int = 0
    _closed: bool = False
    _wakeup: asyncio.Event | None = None

    # ----- requests from the client -----

    def watch(self, req: rpc_pb2.WatchCreateRequest) -> int:
        """Create a watcher; queues the ``created`` response. Returns its ID (-1 if refused)."""
        assert not self._closed, "stream closed"
        hub = self.hub
        cur = hub.store.current_revision
        wid = req.watch_id
        if wid != 0 and wid in self.watchers:
            self._control(
                rpc_pb2.WatchResponse(
                    watch_id=wid, created=True, canceled=True, cancel_reason=DUPLICATE_ID_REASON
                ),
                cur,
            )
            return -1
        end: bytes | None
        if not req.range_end:
            end = None
        elif req.range_end == b"\x00":
            end = b""
        else:
            end = req.range_end
            if end <= req.key:
                refused = rpc_pb2.WatchResponse(
                    watch_id=-1, created=True, canceled=True, cancel_reason=EMPTY_RANGE_REASON
                )
                self._control(refused, cur)
                return -1
        if wid == 0:
            while self._next_id in self.watchers:
                self._next_id += 1
            wid = self._next_id
            self._next_id += 1
        start = req.start_revision
        w = Watcher(
            id=wid,
            stream=self,
            key=req.key,
            end=end,
            min_rev=cur + 1 if start <= 0 else start,
            prev_kv=req.prev_kv,
            no_put=_NOPUT in req.filters,
            no_delete=_NODELETE in req.filters,
            fragment=req.fragment,
            progress_notify=req.progress_notify,
        )
        self.watchers[wid] = w
        self._control(rpc_pb2.WatchResponse(watch_id=wid, created=True), cur)
        hub._add(w, synced=start <= 0 or start > cur)
        if not w.synced:
            hub.sync_unsynced(only=self)
        return wid

    def refuse(self, reason: str) -> None:
        """Answer a creation that may not be made (e.g. no permission): created, canceled."""
        refused = rpc_pb2.WatchResponse(
            watch_id=-1, created=True, canceled=True, cancel_reason=reason
        )
        self._control(refused, self.hub.store.current_revision)

    def cancel(self, watch_id: int) -> bool:
        """Cancel a watcher; queues the ``canceled`` response. False if unknown."""
        w = self.watchers.pop(watch_id, None)
        if w is None:
            return False
        self.hub._remove(w)
        self._control(
            rpc_pb2.WatchResponse(watch_id=watch_id, canceled=True), self.hub.store.current_revision
        )
        return True

    def request_progress(self) -> None:
        """Queue a stream-wide progress response at the current revision (etcd 3.5).

        Only when every watcher of the stream is synced and none waits for a
        revision beyond the current one: otherwise the notification would claim
        a revision older than events a watcher is owed or was promised (the
        progress-before-events bug etcd fixed after 3.5.1). The client asks again.
        """
        cur = self.hub.store.current_revision
        if all(w.synced and w.min_rev <= cur + 1 for w in self.watchers.values()):
            self._control(rpc_pb2.WatchResponse(watch_id=PROGRESS_WATCH_ID), cur)

    def close(self) -> None:
        """Drop every watcher; ``recv`` returns None once the outbox is drained."""
        if self._closed:
            return
        self._closed = True
        for w in list(self.watchers.values()):
            self.hub._remove(w)
        self.watchers.clear()
        self.hub._streams.discard(self)
        self._wake()

    # ----- outbox -----

    def has_room(self) -> bool:
        return self._data_pending < self.queue_size

    def pending(self) -> int:
        """Responses queued, data and control."""
        return len(self._out) + len(self._ready)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _control(self, resp: rpc_pb2.WatchResponse, revision: int) -> None:
        if self._control_pending >= MAX_CONTROL_PENDING:
            # A client that sends requests but never reads its stream: drop it rather than grow.
            log.warning("watch stream control queue full; closing stream")
            self.close()
            return
        resp.header.revision = revision
        self._out.append(resp)
        self._control_pending += 1
        self._wake()

    def _push(self, item: _Data) -> bool:
        if self._closed or self._data_pending >= self.queue_size:
            return False
        self._out.append(item)
        self._data_pending += 1
        self._wake()
        return True

    def get_nowait(self) -> rpc_pb2.WatchResponse | None:
        """The next response as a protobuf message, or None if nothing is queued."""
        reply = self.reply_nowait()
        if isinstance(reply, EncodedWatchResponse):
            return reply.to_message()
        return reply

    def reply_nowait(self) -> WatchReply | None:
        """The next response, its events maybe already encoded; None if nothing is queued."""
        if self._ready:
            return self._ready.popleft()
        if not self._out:
            return None
        item = self._out.popleft()
        if isinstance(item, rpc_pb2.WatchResponse):
            self._control_pending -= 1
            return item
        self._data_pending -= 1
        resps = _build(item)
        first = resps[0]
        self._ready.extend(resps[1:])
        if self.unsynced and self._data_pending == self.queue_size // 2:
            # Half drained: this stream's watchers left behind catch up now, half an
            # outbox at a time (catching up at every freed slot read the backend once
            # per message sent). The hub's periodic round covers the rest.
            self.hub.sync_unsynced(only=self)
        return first

    def drain(self) -> list[rpc_pb2.WatchResponse]:
        """Every queued response (tests and benchmarks)."""
        out = []
        while (r := self.get_nowait()) is not None:
            out.append(r)
        return out

    async def recv(self) -> WatchReply | None:
        """Await the next response; None when the stream is closed and drained."""
        while True:
            r = self.reply_nowait()
            if r is not None:
                return r
            if self._closed:
                return None
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            self._wakeup.clear()
            await self._wakeup.wait()


def _event_size(ev: kv_pb2.Event) -> int:
    n = ev.ByteSize()
    return n + 1 + (1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4)


def _build(item: _Data) -> list[WatchReply]:
    resp = rpc_pb2.WatchResponse(watch_id=item.watch_id)
    resp.header.revision = item.revision
    evs = item.batch.events
    if not item.fragment or len(evs) < 2:
        return [EncodedWatchResponse(resp, item.batch)]
    base = resp.ByteSize() + 2  # + the fragment flag
    total = base + sum(_event_size(e) for e in evs)
    if total < MAX_RESPONSE_BYTES:
        resp.events.extend(evs)
        return [resp]
    out: list[WatchReply] = []
    i = 0
    while i < len(evs):
        part = rpc_pb2.WatchResponse(watch_id=item.watch_id, fragment=True)
        part.header.revision = item.revision
        size = base
        start = i
        while i < len(evs):
            s = _event_size(evs[i])
            if i > start and size + s >= MAX_RESPONSE_BYTES:
                break
            size += s
            i += 1
        part.events.extend(evs[start:i])
        out.append(part)
    last = out[-1]
    assert isinstance(last, rpc_pb2.WatchResponse)
    last.fragment = False
    return out


class History(Protocol):
    """What the hub reads of the store: where it stands and what happened."""

    @property
    def current_revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def events_between(
        self, start_rev: int, end_rev: int
    ) -> Iterator[tuple[int, kv_pb2.Event]]: ...

    def get_at(self, key: bytes, rev: int) -> kv_pb2.KeyValue | None: ...


class WatchHub:
    """All watchers of one store. The store calls ``notify`` after each write."""

    def __init__(
        self,
        store: History,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_max_revs: int = BATCH_MAX_REVS,
    ) -> None:
        assert queue_size > 0 and batch_max_revs > 0
        self.store = store
        self.queue_size = queue_size
        self.batch_max_revs = batch_max_revs
        self._streams: set[WatchStream] = set()
        self._key_watchers: dict[bytes, set[Watcher]] = {}
        self._range_watchers: set[Watcher] = set()
        self._unsynced: dict[Watcher, None] = {}  # insertion-ordered set

    # ----- streams and watcher groups -----

    def new_stream(self, queue_size: int | None = None) -> WatchStream:
        """Open a stream (one per gRPC Watch call)."""
        s = WatchStream(self, queue_size or self.queue_size)
        self._streams.add(s)
        return s

    @property
    def watcher_count(self) -> int:
        return sum(len(s.watchers) for s in self._streams)

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    def has_synced_watchers(self) -> bool:
        """Whether ``notify`` could deliver anything (lets the store skip building events)."""
        return bool(self._key_watchers or self._range_watchers)

    def _add(self, w: Watcher, synced: bool) -> None:
        if synced:
            self._add_synced(w)
        else:
            self._add_unsynced(w)

    def _add_unsynced(self, w: Watcher) -> None:
        self._unsynced[w] = None
        w.stream.unsynced[w] = None

    def _drop_unsynced(self, w: Watcher) -> None:
        self._unsynced.pop(w, None)
        w.stream.unsynced.pop(w, None)

    def _add_synced(self, w: Watcher) -> None:
        w.synced = True
        if w.end is None:
            self._key_watchers.setdefault(w.key, set()).add(w)
        else:
            self._range_watchers.add(w)

    def _remove_synced(self, w: Watcher) -> None:
        w.synced = False
        if w.end is None:
            group = self._key_watchers.get(w.key)
            if group is not None:
                group.discard(w)
                if not group:
                    del self._key_watchers[w.key]
        else:
            self._range_watchers.discard(w)

    def _remove(self, w: Watcher) -> None:
        w.active = False
        if w.synced:
            self._remove_synced(w)
        self._drop_unsynced(w)

    # ----- delivery -----

    def _events_for(self, w: Watcher, batch: EventBatch) -> EventBatch:
        if not (w.no_put or w.no_delete or w.prev_kv):
            return batch  # (shared between watchers: never changed once queued)
        out: list[kv_pb2.Event] = []
        for ev in batch.events:
            if ev.type == _PUT:
                if w.no_put:
                    continue
            elif w.no_delete:
                continue
            if w.prev_kv and not (ev.type == _PUT and ev.kv.version == 1):
                prev = self.store.get_at(ev.kv.key, ev.kv.mod_revision - 1)
                if prev is not None:
                    ev = kv_pb2.Event(type=ev.type, kv=ev.kv, prev_kv=prev)
            out.append(ev)
        return EventBatch(out)

    def _send(self, w: Watcher, batch: EventBatch, revision: int) -> bool:
        """Queue the (filtered) events; False when the stream has no room."""
        if not w.stream.has_room():
            return False
        out = self._events_for(w, batch)
        if not out.events:
            return True  # everything filtered out: nothing to send, and nothing missed
        w.quiet = False
        ok = w.stream._push(_Data(w.id, revision, out, w.fragment))
        assert ok
        return True

    def notify(self, events: list[kv_pb2.Event], revision: int) -> None:
        """Deliver one revision's events to synced watchers. Synchronous; never blocks.

        A watcher whose stream is full moves to the unsynced group and will
        replay from ``revision`` out of the backend.
        """
        per: dict[Watcher, EventBatch] = {}
        kw = self._key_watchers
        rw = self._range_watchers
        if len(events) == 1:
            # One event (a put or a single delete): every watcher that wants it gets the
            # same list. Watcher.contains inlined: a range watcher's end is b"" (no end) or
            # a key, never None.
            key = events[0].kv.key
            batch = EventBatch(events)
            per = dict.fromkeys(kw.get(key, ()), batch)
            per.update((w, batch) for w in rw if w.key <= key and (not w.end or key < w.end))
        else:
            lists: dict[Watcher, list[kv_pb2.Event]] = {}
            for ev in events:
                key = ev.kv.key
                group = kw.get(key)
                if group:
                    for w in group:
                        lists.setdefault(w, []).append(ev)
                for w in rw:
                    if w.contains(key):
                        lists.setdefault(w, []).append(ev)
            per = {w: EventBatch(evs) for w, evs in lists.items()}
        for w, batch in per.items():
            if w.min_rev > revision:
                continue  # starts in the future
            if self._send(w, batch, revision):
                w.min_rev = revision + 1
            else:
                self._remove_synced(w)
                w.min_rev = revision
                self._add_unsynced(w)

    def sync_unsynced(self, only: WatchStream | None = None) -> int:
        """Catch unsynced watchers up from the backend; returns how many became synced.

        Reads at most ``batch_max_revs`` revisions per call. Watchers whose
        stream is full are skipped until it drains. A watcher whose start is
        compacted gets a compacted response and is cancelled. ``only`` limits
        the work to one stream's watchers (a consumer that just drained its
        outbox, a watch just created); such a round leaves compacted watchers to the
        periodic one. The driver should call this periodically (etcd: every 100 ms)
        so that watchers of every stream eventually catch up.
        """
        if not self._unsynced:
            return 0
        store = self.store
        cur = store.current_revision
        compact = store.compact_revision
        ready: list[Watcher] = []
        for w in list(self._unsynced if only is None else only.unsynced):
            if not w.stream.has_room():
                continue
            if compact > 0 and w.min_rev < compact:
                if only is not None:
                    # As etcd: only the periodic round cancels it, so for up to one
                    # interval the watch is there to be cancelled or to clash with a
                    # duplicate ID, as a client of etcd sees it.
                    continue
                resp = rpc_pb2.WatchResponse(watch_id=w.id, compact_revision=compact, canceled=True)
                self._drop_unsynced(w)
                w.active = False
                w.stream.watchers.pop(w.id, None)
                w.stream._control(resp, 0)  # etcd sends this with header revision 0
                continue
            ready.append(w)
        if not ready:
            return 0
        lo = min(w.min_rev for w in ready)
        hi = min(cur, lo + self.batch_max_revs - 1)
        by_rev: list[tuple[int, kv_pb2.Event]] = list(store.events_between(lo, hi))
        synced = 0
        # Watchers of the same range from the same revision (a client that watched one
        # prefix a thousand times) share one pass over what was read.
        matching: dict[tuple[int, bytes, bytes | None], EventBatch] = {}
        for w in ready:
            wanted = (w.min_rev, w.key, w.end)
            batch = matching.get(wanted)
            if batch is None:
                batch = EventBatch(
                    [ev for rev, ev in by_rev if rev >= w.min_rev and w.contains(ev.kv.key)]
                )
                matching[wanted] = batch
            done = hi >= cur
            # Partial catch-up answers at the last revision read, so a client that
            # resumes from the header never skips events (etcd answers curRev).
            if batch.events and not self._send(w, batch, cur if done else hi):
                continue
            if w.min_rev <= hi:
                w.min_rev = hi + 1
            if done:
                self._drop_unsynced(w)
                self._add_synced(w)
                synced += 1
        return synced

    def progress_notify(self) -> None:
        """The periodic progress tick (etcd: every 10 min): each synced ``progress_notify``
        watcher that got no events since the previous tick gets an empty response at the
        current revision."""
        cur = self.store.current_revision
        for s in self._streams:
            for w in s.watchers.values():
                if not w.progress_notify:
                    continue
                # A watcher resumed here from a revision this member has not
                # reached yet (it lags the member it came from) must not be told
                # "nothing up to cur" below what it has already seen.
                if w.quiet and w.synced and w.min_rev <= cur + 1 and s.has_room():
                    s._push(_Data(w.id, cur, EventBatch([]), False))
                w.quiet = True

    def on_restore(self, synced_through: int) -> None:
        """The store was replaced (snapshot restore): every watcher replays from the backend.

        Synced watchers had seen everything up to ``synced_through`` (the revision
        before the restore), which the new state's history shares: replay after it.
        """
        for s in self._streams:
            for w in s.watchers.values():
                if w.synced:
                    self._remove_synced(w)
                    w.min_rev = max(w.min_rev, synced_through + 1)
                    self._add_unsynced(w)
        self.sync_unsynced()

    def close(self) -> None:
        """Close every stream."""
        for s in list(self._streams):
            s.close()
