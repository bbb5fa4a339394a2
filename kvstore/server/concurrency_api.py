"""etcd's v3lock and v3election gRPC services, for clients that use them instead of recipes.

Like etcd, the member serves them as a client of itself: each call runs the
election package's Mutex or Election recipe over the caller's lease (which
the caller keeps alive), through an in-process client connected to this
member. Errors of the recipes travel as etcd's do: the Go error text with
status UNKNOWN; errors of the store keep their status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import grpc

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.v3electionpb import v3election_pb2 as epb
from kvstore._pb.v3electionpb import v3election_pb2_grpc
from kvstore._pb.v3lockpb import v3lock_pb2 as lpb
from kvstore._pb.v3lockpb import v3lock_pb2_grpc
from kvstore.client import Client, TLSConfig
from kvstore.client.concurrency import ConcurrencyError, Election, Mutex, Session
from kvstore.client.errors import EtcdError as ClientError
from kvstore.errors import RecipeError, RemoteError
from kvstore.server.api import _call, abort
from kvstore.server.config import host_port, is_https

if TYPE_CHECKING:
    from kvstore.server.server import EtcdServer

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SESSION_TTL = 60
"""TTL of the lease granted for a call that names none (etcd's session default)."""
MISSING_LEADER_KEY = '"leader" field must be provided'


async def _as_etcd(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a recipe; its failures travel as etcd's do (Go error text; the store's status)."""
    try:
        return await fn()
    except ConcurrencyError as exc:
        raise RecipeError(str(exc)) from None
    except ClientError as exc:
        raise RemoteError(exc.code.value[0], exc.message) from None


class SelfClient:
    """The member's client of itself, opened on first use."""

    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self._client: Client | None = None

    async def get(self) -> Client:
        if self._client is None:
            host, port = host_port(self.server.cfg.listen_client_urls[0])
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            client = Client(
                [f"{host}:{port}"],
                default_timeout=self.server.cfg.request_timeout,
                tls=self._tls(),
            )
            await client.__aenter__()
            self._client = client
        return self._client

    def _tls(self) -> TLSConfig | None:
        """Like etcd's own gateway, dial our TLS client port with our own certificate."""
        cfg = self.server.cfg
        if not is_https(cfg.listen_client_urls[0]):
            return None
        tls = cfg.client_tls
        return TLSConfig(tls.trusted_ca_file or tls.cert_file, tls.cert_file, tls.key_file)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def session(self, lease: int) -> Session:
        client = await self.get()
        if lease == 0:
            lease = (await client.grant(DEFAULT_SESSION_TTL)).ID
        return Session.of_lease(client, lease)


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, server: EtcdServer, client: SelfClient) -> None:
        self.s = server
        self.client = client

    async def Lock(
        self, request: lpb.LockRequest, context: grpc.aio.ServicerContext
    ) -> lpb.LockResponse:
        async def body() -> lpb.LockResponse:
            mutex = Mutex(await self.client.session(request.lease), request.name)
            await mutex.lock()  # a cancelled call gives up its place (the recipe cleans up)
            resp = lpb.LockResponse(key=mutex.key)
            self.s.fill_header(resp.header)
            return resp

        return await _call(context, lambda: _as_etcd(body))

    async def Unlock(
        self, request: lpb.UnlockRequest, context: grpc.aio.ServicerContext
    ) -> lpb.UnlockResponse:
        async def body() -> lpb.UnlockResponse:
            deleted = await (await self.client.get()).delete(request.key)
            resp = lpb.UnlockResponse()
            resp.header.CopyFrom(deleted.header)
            return resp

        return await _call(context, lambda: _as_etcd(body))


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, server: EtcdServer, client: SelfClient) -> None:
        self.s = server
        self.client = client

    async def _resumed(self, leader: epb.LeaderKey) -> Election:
        session = await self.client.session(leader.lease)
        return Election.resume(session, leader.name, leader.key, leader.rev)

    def _header(self) -> rpc_pb2.ResponseHeader:
        header = rpc_pb2.ResponseHeader()
        self.s.fill_header(header)
        return header

    async def Campaign(
        self, request: epb.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> epb.CampaignResponse:
        async def body() -> epb.CampaignResponse:
            session = await self.client.session(request.lease)
            election = Election(session, request.name)
            await election.campaign(request.value)
            leader = epb.LeaderKey(
                name=request.name, key=election.key, rev=election.revision, lease=session.lease_id
            )
            return epb.CampaignResponse(header=self._header(), leader=leader)

        return await _call(context, lambda: _as_etcd(body))

    async def Proclaim(
        self, request: epb.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> epb.ProclaimResponse:
        async def body() -> epb.ProclaimResponse:
            if not request.HasField("leader"):
                raise RecipeError(MISSING_LEADER_KEY)
            await (await self._resumed(request.leader)).proclaim(request.value)
            return epb.ProclaimResponse(header=self._header())

        return await _call(context, lambda: _as_etcd(body))

    async def Resign(
        self, request: epb.ResignRequest, context: grpc.aio.ServicerContext
    ) -> epb.ResignResponse:
        async def body() -> epb.ResignResponse:
            if not request.HasField("leader"):
                raise RecipeError(MISSING_LEADER_KEY)
            await (await self._resumed(request.leader)).resign()
            return epb.ResignResponse(header=self._header())

        return await _call(context, lambda: _as_etcd(body))

    async def Leader(
        self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> epb.LeaderResponse:
        async def body() -> epb.LeaderResponse:
            session = Session.of_lease(await self.client.get(), 0)
            kv = await Election(session, request.name).leader()
            return epb.LeaderResponse(header=self._header(), kv=kv)

        return await _call(context, lambda: _as_etcd(body))

    async def Observe(
        self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[epb.LeaderResponse]:
        session = Session.of_lease(await self.client.get(), 0)
        try:
            async for kv in Election(session, request.name).observe():
                yield epb.LeaderResponse(header=self._header(), kv=kv)
        except ClientError as exc:
            await abort(context, RemoteError(exc.code.value[0], exc.message))
