"""The client against a member that accepts calls and never answers them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import grpc
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from kvstore.client import Client, DeadlineExceededError, UnavailableError
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


class SilentKV(rpc_pb2_grpc.KVServicer):
    """Takes reads and writes and never answers them (a stalled member)."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def _never_answer(self) -> None:
        self.called.set()
        await asyncio.Event().wait()

    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        await self._never_answer()
        raise AssertionError("never reached")

    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        await self._never_answer()
        raise AssertionError("never reached")


SILENT_KV = SilentKV()


@pytest.fixture
async def silent_endpoint() -> AsyncIterator[str]:
    server = grpc.aio.server()
    SILENT_KV.called = asyncio.Event()  # (bound to this test's loop)
    rpc_pb2_grpc.add_LeaseServicer_to_server(SilentLease(), server)  # type: ignore[no-untyped-call]
    rpc_pb2_grpc.add_KVServicer_to_server(SILENT_KV, server)  # type: ignore[no-untyped-call]
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


async def test_a_cancel_scope_that_times_out_a_call_catches_its_own_cancellation(
    silent_endpoint: str,
) -> None:
    """grpc.aio re-raises a cancellation of its call without anyio's message; unshielded,
    it escaped ``move_on_after`` and ended the caller's task group (a controller exited
    with status 0 when a revoke under a deadline met a stalled store)."""
    async with Client([silent_endpoint]) as client:
        with anyio.fail_after(30):
            for _ in range(3):
                with anyio.move_on_after(0.3) as scope:
                    await client.get("key", timeout=10)
                assert scope.cancelled_caught
            # Nothing is left pending on this task, and the client still works on.
            await anyio.lowlevel.checkpoint()
            with pytest.raises(DeadlineExceededError):
                await client.get("key", timeout=0.3)


async def test_a_write_in_flight_when_its_client_closes_fails_with_an_error(
    silent_endpoint: str,
) -> None:
    """Closing the connections cancels the calls on them inside grpc.aio; their callers,
    whom nobody cancelled, get an error rather than a stray cancellation."""
    outcomes: list[str] = []

    async def write(client: Client) -> None:
        try:
            await client.put("key", "value", timeout=30)
        except UnavailableError:
            outcomes.append("unavailable")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg, Client([silent_endpoint]) as client:
            tg.start_soon(write, client)
            await SILENT_KV.called.wait()
            # The client closed with the write still in flight on its connection.
    assert outcomes == ["unavailable"]
