"""etcd's v3lock and v3election services, for clients that use them instead of recipes.

Like etcd, the member serves them as a client of itself: each call runs the
client's Mutex or Election recipe over the caller's lease (which the caller
keeps alive), through an in-process client connected to this member. Errors
of the recipes and of the store travel as etcd's do: the Go error text with
status UNKNOWN (see ``_as_etcd``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from kvstore import rpctypes
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.v3electionpb import v3election_pb2 as epb
from kvstore._pb.v3lockpb import v3lock_pb2 as lpb
from kvstore.client import Client, TLSConfig
from kvstore.client.concurrency import ConcurrencyError, Election, Mutex, Session
from kvstore.client.errors import EtcdError as ClientError
from kvstore.errors import RecipeError, RemoteError
from kvstore.rpc import CallContext, Cardinality, Method
from kvstore.server.config import ServerConfig, host_port, is_https
from kvstore.server.services.core import Core

GATEWAY_KEY = "grpcgateway-accept"
"""Metadata of a proxy (etcd's gateway) whose TLS certificate must not name the user."""
TOKEN_KEYS = ("token", "authorization")


def token_of(ctx: CallContext) -> str | None:
    """The caller's token, as etcd takes it: ``token``, or ``authorization`` (``Bearer``)."""
    for key in TOKEN_KEYS:
        token = ctx.metadata.get(key)
        if token:
            return token.removeprefix("Bearer ")
    return None


T = TypeVar("T")
LOCK = "/v3lockpb.Lock/"
ELECTION = "/v3electionpb.Election/"
DEFAULT_SESSION_TTL = 60
"""TTL of the lease granted for a call that names none (etcd's session default)."""
MISSING_LEADER_KEY = '"leader" field must be provided'


_ETCD_ERRORS = frozenset(v for k, v in vars(rpctypes).items() if k.startswith("ERR_"))


async def _as_etcd(call: Awaitable[T]) -> T:
    """Run a recipe; its failures travel as etcd's do.

    etcd's in-process client turns the store's own errors into plain Go errors,
    which its gRPC server sends with status UNKNOWN (``etcdserver: requested
    lease not found`` included); other failures keep their status.
    """
    try:
        return await call
    except ConcurrencyError as exc:
        raise RecipeError(str(exc)) from None
    except ClientError as exc:
        if exc.message in _ETCD_ERRORS:
            raise RecipeError(exc.message) from None
        raise RemoteError(exc.code.value[0], exc.message) from None


class SelfClient:
    """The member's client of itself, opened on first use."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self._client: Client | None = None

    async def get(self) -> Client:
        if self._client is None:
            host, port = host_port(self.cfg.listen_client_urls[0])
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            client = Client(
                [f"{host}:{port}"], default_timeout=self.cfg.request_timeout, tls=self._tls()
            )
            await client.__aenter__()
            self._client = client
        return self._client

    def _tls(self) -> TLSConfig | None:
        """Like etcd's own gateway, dial our TLS client port with our own certificate."""
        cfg = self.cfg
        if not is_https(cfg.listen_client_urls[0]):
            return None
        tls = cfg.client_tls
        return TLSConfig(tls.trusted_ca_file or tls.cert_file, tls.cert_file, tls.key_file)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    @contextlib.asynccontextmanager
    async def on_behalf(self, ctx: CallContext) -> AsyncIterator[Client]:
        """The member's client, calling as the caller of ``ctx`` (its token; never as us).

        The gateway mark keeps a TLS member certificate from naming the user
        (etcd's rule for its own gateway), so a caller without a token calls as nobody.
        """
        client = await self.get()
        async with client.with_token(token_of(ctx), ((GATEWAY_KEY, "kvstore"),)) as view:
            yield view

    async def session(self, client: Client, lease: int) -> Session:
        if lease == 0:
            lease = (await client.grant(DEFAULT_SESSION_TTL)).ID
        return Session.of_lease(client, lease)


class LockService:
    def __init__(self, core: Core, client: SelfClient) -> None:
        self.core = core
        self.client = client

    async def lock(self, request: lpb.LockRequest, ctx: CallContext) -> lpb.LockResponse:
        async def body() -> lpb.LockResponse:
            async with self.client.on_behalf(ctx) as client:
                mutex = Mutex(await self.client.session(client, request.lease), request.name)
                await mutex.lock()  # a cancelled call gives up its place (the recipe cleans up)
            resp = lpb.LockResponse(key=mutex.key)
            self.core.fill_header(resp.header)
            return resp

        return await _as_etcd(body())

    async def unlock(self, request: lpb.UnlockRequest, ctx: CallContext) -> lpb.UnlockResponse:
        async def body() -> lpb.UnlockResponse:
            async with self.client.on_behalf(ctx) as client:
                deleted = await client.delete(request.key)
            resp = lpb.UnlockResponse()
            resp.header.CopyFrom(deleted.header)
            return resp

        return await _as_etcd(body())

    def methods(self) -> list[tuple[str, Method]]:
        return [
            (LOCK + "Lock", Method(lpb.LockRequest, self.lock)),
            (LOCK + "Unlock", Method(lpb.UnlockRequest, self.unlock)),
        ]


class ElectionService:
    def __init__(self, core: Core, client: SelfClient) -> None:
        self.core = core
        self.client = client

    async def _resumed(self, client: Client, leader: epb.LeaderKey) -> Election:
        session = await self.client.session(client, leader.lease)
        return Election.resume(session, leader.name, leader.key, leader.rev)

    def _header(self) -> rpc_pb2.ResponseHeader:
        header = rpc_pb2.ResponseHeader()
        self.core.fill_header(header)
        return header

    async def campaign(
        self, request: epb.CampaignRequest, ctx: CallContext
    ) -> epb.CampaignResponse:
        async def body() -> epb.CampaignResponse:
            async with self.client.on_behalf(ctx) as client:
                session = await self.client.session(client, request.lease)
                election = Election(session, request.name)
                await election.campaign(request.value)
            leader = epb.LeaderKey(
                name=request.name, key=election.key, rev=election.revision, lease=session.lease_id
            )
            return epb.CampaignResponse(header=self._header(), leader=leader)

        return await _as_etcd(body())

    async def proclaim(
        self, request: epb.ProclaimRequest, ctx: CallContext
    ) -> epb.ProclaimResponse:
        async def body() -> epb.ProclaimResponse:
            if not request.HasField("leader"):
                raise RecipeError(MISSING_LEADER_KEY)
            if not request.leader.key:  # etcd's recipe sends it on, and its txn is refused
                raise RecipeError(rpctypes.ERR_EMPTY_KEY)
            async with self.client.on_behalf(ctx) as client:
                await (await self._resumed(client, request.leader)).proclaim(request.value)
            return epb.ProclaimResponse(header=self._header())

        return await _as_etcd(body())

    async def resign(self, request: epb.ResignRequest, ctx: CallContext) -> epb.ResignResponse:
        async def body() -> epb.ResignResponse:
            if not request.HasField("leader"):
                raise RecipeError(MISSING_LEADER_KEY)
            if not request.leader.key:
                raise RecipeError(rpctypes.ERR_EMPTY_KEY)
            async with self.client.on_behalf(ctx) as client:
                await (await self._resumed(client, request.leader)).resign()
            return epb.ResignResponse(header=self._header())

        return await _as_etcd(body())

    async def leader(self, request: epb.LeaderRequest, ctx: CallContext) -> epb.LeaderResponse:
        async def body() -> epb.LeaderResponse:
            async with self.client.on_behalf(ctx) as client:
                kv = await Election(Session.of_lease(client, 0), request.name).leader()
            return epb.LeaderResponse(header=self._header(), kv=kv)

        return await _as_etcd(body())

    async def observe(
        self, request: epb.LeaderRequest, ctx: CallContext
    ) -> AsyncIterator[epb.LeaderResponse]:
        async with self.client.on_behalf(ctx) as client:
            observing = Election(Session.of_lease(client, 0), request.name).observe()
            while True:
                kv = await _as_etcd(_next_or_none(observing))
                if kv is None:
                    return
                yield epb.LeaderResponse(header=self._header(), kv=kv)

    def methods(self) -> list[tuple[str, Method]]:
        observe = Method(epb.LeaderRequest, self.observe, Cardinality.SERVER_STREAM)
        return [
            (ELECTION + "Campaign", Method(epb.CampaignRequest, self.campaign)),
            (ELECTION + "Proclaim", Method(epb.ProclaimRequest, self.proclaim)),
            (ELECTION + "Resign", Method(epb.ResignRequest, self.resign)),
            (ELECTION + "Leader", Method(epb.LeaderRequest, self.leader)),
            (ELECTION + "Observe", observe),
        ]


async def _next_or_none(iterator: AsyncIterator[T]) -> T | None:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None
