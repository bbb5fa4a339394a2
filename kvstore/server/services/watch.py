"""etcd's Watch service: one stream of watch creations, cancels and progress requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import NoLeaderError
from kvstore.mvcc.watch import WatchReply
from kvstore.rpc import CallContext, Cardinality, Method
from kvstore.server.services.core import Core, requires_leader

SERVICE = "/etcdserverpb.Watch/"


class WatchService:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def watch(
        self, requests: AsyncIterator[rpc_pb2.WatchRequest], ctx: CallContext
    ) -> AsyncIterator[WatchReply]:
        core = self.core
        node = core.node
        require_leader = requires_leader(ctx)
        if require_leader and not node.leader_id:
            raise NoLeaderError()
        stream = node.hub.new_stream()
        if require_leader:
            core.leader_streams.add(stream)

        async def read_requests() -> None:
            async for req in requests:
                kind = req.WhichOneof("request_union")
                if kind == "create_request":
                    refusal = core.watch_refusal(ctx, req.create_request)
                    if refusal is None:
                        stream.watch(req.create_request)
                    else:
                        stream.refuse(refusal)
                elif kind == "cancel_request":
                    stream.cancel(req.cancel_request.watch_id)
                elif kind == "progress_request":
                    stream.request_progress()
            # A client that half-closes keeps receiving (as with etcd); the call's
            # cancellation ends the stream.

        def requests_failed(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                stream.close()  # what is queued goes out, then the stream ends with the error

        reader = asyncio.create_task(read_requests())
        reader.add_done_callback(requests_failed)
        try:
            while True:
                resp = await stream.recv()
                if resp is None:
                    break
                h = resp.header
                h.cluster_id = node.cluster_id
                h.member_id = node.id
                h.raft_term = node.term
                yield resp
            failed = reader.exception() if reader.done() and not reader.cancelled() else None
            if failed is not None:
                raise failed
            if require_leader and not node.leader_id:
                raise NoLeaderError()
        finally:
            core.leader_streams.discard(stream)
            stream.close()
            reader.cancel()

    def methods(self) -> list[tuple[str, Method]]:
        return [
            (SERVICE + "Watch", Method(rpc_pb2.WatchRequest, self.watch, Cardinality.BIDI_STREAM))
        ]
