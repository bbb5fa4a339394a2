"""Lease keepalive over etcd's LeaseKeepAlive stream."""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType

import anyio
import anyio.abc
import grpc
import grpc.aio

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore.client.calls import await_call
from kvstore.client.endpoints import CallAuth, EndpointPool
from kvstore.client.errors import (
    RELOGIN_MESSAGES,
    DeadlineExceededError,
    EtcdError,
    LeaseNotFoundError,
    UnavailableError,
    from_rpc_error,
)
from kvstore.client.watch import REQUIRE_LEADER
from kvstore.rpctypes import ERR_LEASE_NOT_FOUND

log = logging.getLogger(__name__)


def _open_stream(pool: EndpointPool, endpoint: str, auth: CallAuth) -> grpc.aio.StreamStreamCall:
    method = pool.channel(endpoint).stream_stream(
        "/etcdserverpb.Lease/LeaseKeepAlive",
        request_serializer=pb.LeaseKeepAliveRequest.SerializeToString,
        response_deserializer=pb.LeaseKeepAliveResponse.FromString,
    )
    return method(metadata=auth.metadata(REQUIRE_LEADER))


async def _renew(call: grpc.aio.StreamStreamCall, lease_id: int) -> int:
    """One request/response on an open stream; returns the new TTL (<= 0: lease gone)."""
    try:
        await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
    except (asyncio.InvalidStateError, grpc.aio.UsageError) as error:
        # The server already ended the stream (a member that lost its leader ends it at
        # once): the next stream goes elsewhere.
        raise UnavailableError(f"lease keepalive stream ended: {error}") from None
    response = await call.read()
    if response is grpc.aio.EOF:
        raise UnavailableError("lease keepalive stream closed by the server")
    ttl: int = response.TTL
    return ttl


async def _renew_within(call: grpc.aio.StreamStreamCall, lease_id: int, seconds: float) -> int:
    """``_renew`` with a deadline: ``TimeoutError`` when it passes, and the call is cancelled.

    The exchange is awaited through :func:`await_call`, so the deadline's
    cancellation stays the deadline's (grpc.aio re-raises it without anyio's
    mark) and an exchange grpc.aio cancels by itself is an ``UnavailableError``.
    """
    with anyio.move_on_after(seconds):
        return await await_call(_renew(call, lease_id), "lease keepalive", call.cancel)
    raise TimeoutError


class LeaseKeepAlive:
    """Renews a lease at a third of its TTL while the context is open.

    ``ttl`` is the last TTL the server granted; ``deadline`` is the local
    monotonic time by which the lease expires unless renewed again (measured
    from when the renewal was *sent*, so it never overestimates); ``lost`` is
    set once the server says the lease is gone or the deadline passes without
    a successful renewal.
    """

    def __init__(
        self,
        pool: EndpointPool,
        lease_id: int,
        tasks: anyio.abc.TaskGroup,
        auth: CallAuth | None = None,
    ) -> None:
        self._pool = pool
        self._tasks = tasks
        self._auth = auth or CallAuth()
        self.lease_id = lease_id
        self.ttl = 0
        self.deadline = 0.0
        self.lost = anyio.Event()
        self._scope = anyio.CancelScope()

    @staticmethod
    async def renew_once(
        pool: EndpointPool, lease_id: int, timeout: float, auth: CallAuth | None = None
    ) -> int:
        endpoint = pool.current
        call = _open_stream(pool, endpoint, auth or CallAuth())
        try:
            ttl = await _renew_within(call, lease_id, timeout)
        except TimeoutError:
            raise DeadlineExceededError(f"lease keepalive took over {timeout}s") from None
        except grpc.aio.AioRpcError as error:
            converted = from_rpc_error(error)
            if isinstance(converted, UnavailableError):
                pool.fail_over(endpoint)
            raise converted from error
        finally:
            call.cancel()
        if ttl <= 0:
            raise LeaseNotFoundError(ERR_LEASE_NOT_FOUND)
        return ttl

    async def __aenter__(self) -> LeaseKeepAlive:
        sent = time.monotonic()
        try:
            self.ttl = await self.renew_once(self._pool, self.lease_id, 5.0, self._auth)
        except EtcdError as error:
            if not await self._relogged_in(error):
                raise
            self.ttl = await self.renew_once(self._pool, self.lease_id, 5.0, self._auth)
        self.deadline = sent + self.ttl
        self._tasks.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scope.cancel()

    async def _run(self) -> None:
        with self._scope:
            attempt = 0
            while not self.lost.is_set():
                endpoint = self._pool.current
                try:
                    await self._renew_loop(endpoint)
                except (grpc.aio.AioRpcError, EtcdError, TimeoutError) as error:
                    log.info("lease %x keepalive via %s failed: %s", self.lease_id, endpoint, error)
                    if isinstance(error, grpc.aio.AioRpcError):
                        error = from_rpc_error(error)
                    if not (isinstance(error, EtcdError) and await self._relogged_in(error)):
                        self._pool.fail_over(endpoint)
                if time.monotonic() >= self.deadline:
                    log.warning(
                        "lease %x expired locally before a renewal got through", self.lease_id
                    )
                    self.lost.set()
                    return
                attempt += 1
                await anyio.sleep(min(0.1 * attempt, 1.0))  # reconnect pacing

    async def _relogged_in(self, error: EtcdError) -> bool:
        """Log in again when the renewal was refused for its token (the next stream has it)."""
        relogin = self._auth.relogin
        if relogin is None or error.message not in RELOGIN_MESSAGES:
            return False
        await relogin()
        return True

    async def _renew_loop(self, endpoint: str) -> None:
        call = _open_stream(self._pool, endpoint, self._auth)
        try:
            while True:
                sent = time.monotonic()
                ttl = await _renew_within(call, self.lease_id, max(self.deadline - sent, 0.01))
                if ttl <= 0:
                    log.warning("lease %x is gone", self.lease_id)
                    self.lost.set()
                    return
                self.ttl = ttl
                self.deadline = sent + ttl
                await anyio.sleep(max(ttl / 3.0, 0.1))  # renewal cadence
        finally:
            call.cancel()
