"""Watches multiplexed on one gRPC stream, resumed across endpoints.

One :class:`WatchHub` per client owns the stream. Creates are sent one at a
time and matched to the next ``created`` response, as etcd answers them in
order. When the stream breaks, the hub reconnects (to the next endpoint) and
re-creates every watch from the revision after the last one it delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType

import anyio
import anyio.abc
import grpc
import grpc.aio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client.endpoints import CallAuth, EndpointPool
from kvstore.client.errors import (
    RELOGIN_MESSAGES,
    CompactedError,
    EtcdError,
    WatchCanceledError,
    cancelled_inside_grpc,
    from_rpc_error,
)
from kvstore.rpctypes import ERR_COMPACTED

log = logging.getLogger(__name__)

# Responses a watch may hold before the shared stream waits for its reader.
WATCH_BUFFER = 1024
# Errors after which reconnecting cannot help.
_FATAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}
# Ask the server to end our streams when its member loses the Raft leader, so
# a watch never sits silently on a partitioned member (etcd's WithRequireLeader).
REQUIRE_LEADER = (("hasleader", "true"),)
MAX_RELOGINS = 3
"""Logins a watch's creation may ask for before its refusal is passed on."""


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response: the events of one or more whole revisions, in order.

    ``revision`` is the store revision of the response header. A batch with
    no events is a progress notification: every event up to ``revision`` has
    been delivered.
    """

    revision: int
    events: list[kv_pb2.Event]

    @property
    def is_progress_notify(self) -> bool:
        return not self.events


@dataclass(eq=False)
class _WatchState:
    request: pb.WatchCreateRequest
    send: MemoryObjectSendStream[WatchBatch | EtcdError]
    watch_id: int = -1
    next_revision: int = 0  # resume point; 0 until the first response fixes it
    closed: bool = False  # the consumer left; cancel on the server once the id is known
    created: anyio.Event = field(default_factory=anyio.Event)
    relogins: int = 0  # creates refused for their token, each followed by a new login

    def resume_request(self) -> pb.WatchRequest:
        create = pb.WatchCreateRequest()
        create.CopyFrom(self.request)
        if self.next_revision:
            create.start_revision = self.next_revision
        return pb.WatchRequest(create_request=create)


class WatchHub:
    """Owns the client's watch stream and routes responses to watches."""

    def __init__(
        self, pool: EndpointPool, tasks: anyio.abc.TaskGroup, auth: CallAuth | None = None
    ) -> None:
        self._pool = pool
        self._tasks = tasks
        self._auth = auth or CallAuth()
        self._watches: dict[int, _WatchState] = {}
        self._pending: list[_WatchState] = []  # creates sent, awaiting 'created', in order
        self._unsent: list[_WatchState] = []
        self._call: grpc.aio.StreamStreamCall | None = None
        self._running = False
        self._wakeup = anyio.Event()
        self._write_lock = anyio.Lock()

    async def add(self, state: _WatchState) -> None:
        self._unsent.append(state)
        if not self._running:
            self._running = True
            self._tasks.start_soon(self._run)
        else:
            await self._flush()
        self._wakeup.set()
        await state.created.wait()

    async def remove(self, state: _WatchState) -> None:
        state.closed = True
        if state in self._unsent:
            self._unsent.remove(state)
        if self._watches.get(state.watch_id) is state:
            del self._watches[state.watch_id]
            await self._write(
                pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=state.watch_id))
            )
        state.send.close()

    async def request_progress(self) -> None:
        await self._write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    async def _write(self, request: pb.WatchRequest) -> None:
        """Send ``request`` on the stream, in order with the other writes.

        The write runs in a task of its own, awaited through a shield: the
        caller is a watch's consumer, which may be cancelled at any point, and
        grpc.aio cancels the whole call when a write is interrupted, which
        would end every watch of the client.
        """
        call = self._call
        if call is None:
            return  # the next stream re-sends what matters
        write = asyncio.ensure_future(self._write_in_order(call, request))
        write.add_done_callback(_consume_outcome)
        await asyncio.shield(write)

    async def _write_in_order(
        self, call: grpc.aio.StreamStreamCall, request: pb.WatchRequest
    ) -> None:
        async with self._write_lock:
            try:
                await call.write(request)
            except (
                grpc.aio.AioRpcError,
                grpc.aio.UsageError,
                anyio.ClosedResourceError,
                # The stream already ended (a member without a leader ends it at once);
                # reading it raises, and the next stream re-sends what matters.
                asyncio.InvalidStateError,
                # grpc.aio's word for a write pending when the stream was cancelled (it
                # broke, or the client is closing); nobody else cancels this task.
                asyncio.CancelledError,
            ) as error:
                log.debug("watch stream write failed: %s", error)

    async def _flush(self) -> None:
        """Send queued creates (all at once; responses come back in the same order)."""
        while self._unsent and self._call is not None:
            state = self._unsent.pop(0)
            self._pending.append(state)
            await self._write(state.resume_request())

    async def _run(self) -> None:
        attempt = 0
        while True:
            if not (self._watches or self._pending or self._unsent):
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            target = self._pool.current
            try:
                await self._serve(target)
                attempt = 0
            except grpc.aio.AioRpcError as error:
                if error.code() in _FATAL_CODES:
                    self._fail_all(from_rpc_error(error))
                    continue
                log.info("watch stream to %s broke (%s); resuming", target, error.code())
            except asyncio.CancelledError:
                if not cancelled_inside_grpc():
                    raise
                log.info("watch stream to %s was cancelled inside gRPC; resuming", target)
            self._call = None
            # Every live watch is re-created on the next stream from its resume point.
            self._unsent = [*self._pending, *self._watches.values(), *self._unsent]
            self._pending.clear()
            self._watches.clear()
            self._pool.fail_over(target)
            attempt += 1
            await anyio.sleep(min(0.05 * attempt, 1.0))  # reconnect pacing

    async def _serve(self, target: str) -> None:
        channel = self._pool.channel(target)
        method = channel.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.WatchResponse.FromString,
        )
        call = method(metadata=self._auth.metadata(REQUIRE_LEADER))
        self._call = call
        try:
            await self._flush()
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise _stream_ended()
                await self._dispatch(response)
                await self._flush()
        finally:
            call.cancel()

    async def _dispatch(self, response: pb.WatchResponse) -> None:
        revision = response.header.revision
        if response.created:
            if not self._pending:
                log.warning("watch created response with no pending create")
                return
            state = self._pending.pop(0)
            if response.canceled and await self._relogged_in(state, response):
                # A stream's token is fixed when it opens: a new stream carries the new one.
                self._unsent.insert(0, state)
                raise _stream_ended("watch stream reopened with a new token")
            state.watch_id = response.watch_id
            if not state.next_revision:
                state.next_revision = revision + 1
            if response.canceled:
                await self._cancelled(state, response)
                return
            if state.closed:
                await self._write(
                    pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=state.watch_id))
                )
                return
            self._watches[response.watch_id] = state
            state.created.set()
            return
        if response.watch_id == -1:
            # A progress notification for the whole stream (requested with request_progress).
            for state in list(self._watches.values()):
                await self._deliver(state, WatchBatch(revision, []))
                state.next_revision = max(state.next_revision, revision + 1)
            return
        state_or_none = self._watches.get(response.watch_id)
        if state_or_none is None:
            return  # a watch we already cancelled
        state = state_or_none
        if response.canceled:
            del self._watches[response.watch_id]
            await self._cancelled(state, response)
            return
        events = list(response.events)
        if events:
            state.next_revision = events[-1].kv.mod_revision + 1
        else:
            state.next_revision = max(state.next_revision, revision + 1)
        await self._deliver(state, WatchBatch(revision, events))

    async def _relogged_in(self, state: _WatchState, response: pb.WatchResponse) -> bool:
        """Log in again if the create was refused for its token (a few times per watch)."""
        relogin = self._auth.relogin
        # etcd words the reason as a gRPC error: "rpc error: code = ... desc = <message>".
        reason = response.cancel_reason.rpartition("desc = ")[2]
        if relogin is None or reason not in RELOGIN_MESSAGES:
            return False
        if state.relogins >= MAX_RELOGINS:
            return False
        state.relogins += 1
        await relogin()
        return True

    async def _deliver(self, state: _WatchState, item: WatchBatch | EtcdError) -> None:
        # A consumer that is gone is fine: remove() cancels its watch on the server.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await state.send.send(item)

    async def _cancelled(self, state: _WatchState, response: pb.WatchResponse) -> None:
        error: EtcdError
        if response.compact_revision:
            error = CompactedError(ERR_COMPACTED, response.compact_revision)
        else:
            error = WatchCanceledError(response.cancel_reason or "watch cancelled by the server")
        state.created.set()
        await self._deliver(state, error)
        state.send.close()

    def _fail_all(self, error: EtcdError) -> None:
        for state in [*self._pending, *self._watches.values(), *self._unsent]:
            with contextlib.suppress(anyio.WouldBlock):
                state.send.send_nowait(error)
            state.send.close()
            state.created.set()
        self._pending.clear()
        self._watches.clear()
        self._unsent.clear()


def _consume_outcome(write: asyncio.Future[None]) -> None:
    if not write.cancelled():
        write.exception()  # retrieved here: a write whose caller left logs nothing


def _stream_ended(details: str = "watch stream closed by the server") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )


class Watch:
    """One watch: an async context manager and an async iterator of :class:`WatchBatch`."""

    def __init__(self, hub: WatchHub, request: pb.WatchCreateRequest) -> None:
        self._hub = hub
        send, receive = anyio.create_memory_object_stream[WatchBatch | EtcdError](WATCH_BUFFER)
        self._receive: MemoryObjectReceiveStream[WatchBatch | EtcdError] = receive
        self._state = _WatchState(request=request, send=send)

    @property
    def watch_id(self) -> int:
        return self._state.watch_id

    async def __aenter__(self) -> Watch:
        try:
            await self._hub.add(self._state)
        except BaseException:
            # Cancelled while opening: the create may be on its way, and a watch nobody
            # reads would fill up and hold back the shared stream. Cancel it as on exit.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._hub.remove(self._state)
        self._receive.close()

    def __aiter__(self) -> AsyncIterator[WatchBatch]:
        return self

    async def __anext__(self) -> WatchBatch:
        try:
            item = await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        if isinstance(item, EtcdError):
            raise item
        return item
