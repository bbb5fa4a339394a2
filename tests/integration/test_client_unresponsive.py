"""The client against a member that accepts calls and never answers them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import grpc
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from kvstore.client import Client, DeadlineExceededError
from kvstore.ports import free_ports


class SilentLease(rpc_pb2_grpc.LeaseServicer):
    """Reads keepalive requests and never replies (a member stuck without a leader)."""

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        async for _ in request_iterator:
            pass
        await asyncio.Event().wait()
        yield rpc_pb2.LeaseKeepAliveResponse()  # never reached


@pytest.fixture
async def silent_endpoint() -> AsyncIterator[str]:
    server = grpc.aio.server()
    rpc_pb2_grpc.add_LeaseServicer_to_server(SilentLease(), server)  # type: ignore[no-untyped-call]
    port = free_ports(1)[0]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def test_keepalive_once_times_out_with_an_error_not_a_stray_cancellation(
    silent_endpoint: str,
) -> None:
    outcomes: list[str] = []

    async def renew() -> None:
        try:
            await client.keepalive_once(7, timeout=1.0)
        except DeadlineExceededError:
            outcomes.append("deadline")

    async with Client([silent_endpoint]) as client:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(renew)
                tg.start_soon(renew)
        # Both callers got the error and the task group (and this task) lived on.
        assert outcomes == ["deadline", "deadline"]
        await (
            anyio.lowlevel.checkpoint()
        )  # a checkpoint: no cancellation is left pending on this task
