"""The async etcd v3 client shared by election, controllers, chaos and benchmarks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import grpc
import grpc.aio
from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore.client.auth import AuthCalls
from kvstore.client.calls import await_call
from kvstore.client.endpoints import CallAuth, EndpointPool, TLSConfig
from kvstore.client.errors import (
    RELOGIN_MESSAGES,
    AuthNotEnabledError,
    DeadlineExceededError,
    EtcdError,
    UnavailableError,
    from_rpc_error,
)
from kvstore.client.lease import LeaseKeepAlive
from kvstore.client.txn import (
    Key,
    Txn,
    delete_request,
    put_request,
    range_request,
    resolve_range_end,
    to_bytes,
)
from kvstore.client.watch import Watch, WatchHub

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)

# gRPC reports a call that never left the client (no connection could be made)
# with this text; only then is it safe to resend a write elsewhere.
_NOT_SENT_MARKERS = ("failed to connect to all addresses", "Connection refused")


def _never_sent(error: grpc.aio.AioRpcError) -> bool:
    details = error.details() or ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and any(
        marker in details for marker in _NOT_SENT_MARKERS
    )


class Client(AuthCalls):
    """An etcd v3 client over a list of endpoints, with failover.

    Use as ``async with Client(["127.0.0.1:2379", ...]) as client:``; the
    context owns the background tasks of watches and lease keepalives and
    cancels them on exit.

    Failover follows etcd's clientv3: calls go to one endpoint; when it is
    unreachable, reads move to the next endpoint and are retried until the
    call's deadline. Writes are resent only when gRPC proves they never left
    the client; a write that failed in flight raises :class:`UnavailableError`
    (it may have been applied) and the next call uses the next endpoint.

    Every call takes ``timeout`` (seconds, default ``default_timeout``).
    ``tls`` (a :class:`TLSConfig`) talks TLS to the endpoints, with a client
    certificate if the servers require one.

    With ``user`` and ``password`` the client logs in when it opens (etcd's
    Authenticate) and sends the token with every call; when a member answers
    that the token is invalid or stale (expired, or the auth store changed),
    it logs in again and retries, as etcd's clientv3 does. A store without
    auth enabled is used without a token.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        default_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        tls: TLSConfig | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self._pool = EndpointPool(endpoints, tls)
        self.default_timeout = default_timeout
        self.connect_timeout = connect_timeout
        self._task_group: anyio.abc.TaskGroup | None = None
        self._watch_hub: WatchHub | None = None
        self._auth = CallAuth()
        self._credentials: tuple[str, str] | None = None
        self._login_lock = anyio.Lock()
        self._owner: Client | None = None  # set on views made by with_token
        if user is not None or password is not None:
            if not user or password is None:
                raise ValueError("a login needs both user and password")
            self._credentials = (user, password)
            self._auth.relogin = self.login

    @property
    def endpoints(self) -> list[str]:
        return list(self._pool.endpoints)

    @property
    def token(self) -> str | None:
        """The token calls carry (after a login; None without one)."""
        return self._auth.token

    @property
    def current_endpoint(self) -> str:
        return self._pool.current

    async def __aenter__(self) -> Client:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        if self._credentials is not None:
            try:
                await self.login()
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        return self

    def with_token(self, token: str | None, extra: tuple[tuple[str, str], ...] = ()) -> Client:
        """A client on this one's connections whose calls carry ``token`` (and ``extra``).

        For a server that makes calls on behalf of its own callers. Use it as
        ``async with client.with_token(token) as view:``; it has its own watches
        and keepalives, ended with the block, and never logs in itself.
        """
        view = Client.__new__(Client)
        view.__dict__.update(self.__dict__)
        view._owner = self
        view._task_group = None
        view._watch_hub = None
        view._login_lock = anyio.Lock()
        view._auth = CallAuth(extra)
        view._auth.token = token
        view._credentials = None
        return view

    async def login(self) -> None:
        """Log in with the client's user and password; later calls carry the new token.

        Concurrent callers share one login. A store without auth enabled is fine
        (calls then go without a token), as with etcd's clientv3.
        """
        if self._credentials is None:
            raise ValueError("this client has no user and password")
        token_before = self._auth.token
        async with self._login_lock:
            if self._auth.token != token_before:
                return  # another task logged in meanwhile
            user, password = self._credentials
            try:
                response = await self._unary(
                    "/etcdserverpb.Auth/Authenticate",
                    pb.AuthenticateRequest(name=user, password=password),
                    pb.AuthenticateResponse,
                    timeout=None,
                    idempotent=True,
                    relogin=False,
                )
            except AuthNotEnabledError:
                self._auth.token = None
                return
            self._auth.token = response.token

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        try:
            # The body's own exception is not handed to the task group, so it
            # propagates as itself rather than wrapped in an ExceptionGroup.
            await self._task_group.__aexit__(None, None, None)
            return None
        finally:
            self._task_group = None
            self._watch_hub = None
            if self._owner is None:  # a view leaves the shared connections to its owner
                await self._pool.close()

    def _tasks(self) -> anyio.abc.TaskGroup:
        if self._task_group is None:
            raise RuntimeError("use the client as 'async with Client(...) as client:'")
        return self._task_group

    # ---- the one place calls are made ----

    async def _unary(
        self,
        path: str,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None,
        idempotent: bool,
        endpoint: str | None = None,
        relogin: bool = True,
    ) -> R:
        """Send one unary call, failing over between endpoints within the deadline.

        A call refused for its token is retried once after a new login (with
        ``relogin`` and a user and password).
        """
        budget = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        last: EtcdError | None = None
        attempt = 0
        can_relogin = relogin and self._auth.relogin is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if last is not None:
                    raise type(last)(f"{path}: gave up after {budget}s: {last.message}")
                raise DeadlineExceededError(f"{path} did not complete within {budget}s")
            target = endpoint or self._pool.current
            channel = self._pool.channel(target)
            # With nowhere else to go, a member that is (re)starting is worth waiting for.
            fail_fast = endpoint is None and len(self._pool.endpoints) > 1
            connect_timeout = min(remaining, self.connect_timeout)
            if not await self._ready(channel, connect_timeout, fail_fast=fail_fast):
                last = UnavailableError(f"{target}: cannot connect")
                if endpoint is not None:
                    raise last
                await self._backoff(target, attempt)
                attempt += 1
                continue
            call = channel.unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            rpc_error: grpc.aio.AioRpcError | None = None
            pending = call(request, timeout=remaining, metadata=self._auth.metadata())
            try:
                response: R = await await_call(pending, f"{target}: {path}", pending.cancel)
                return response
            except UnavailableError as error:
                last = error  # maybe sent and applied: only an idempotent call goes again
            except grpc.aio.AioRpcError as error:
                rpc_error = error
                last = from_rpc_error(error)
                if can_relogin and last.message in RELOGIN_MESSAGES:
                    can_relogin = False
                    relogin_now = self._auth.relogin
                    assert relogin_now is not None
                    await relogin_now()
                    continue
            never_sent = rpc_error is not None and _never_sent(rpc_error)
            retry = isinstance(last, UnavailableError) and (idempotent or never_sent)
            if endpoint is not None or not retry:
                if isinstance(last, UnavailableError) and endpoint is None:
                    self._pool.fail_over(target)
                raise last from rpc_error
            await self._backoff(target, attempt)
            attempt += 1

    @staticmethod
    async def _ready(channel: grpc.aio.Channel, timeout: float, *, fail_fast: bool) -> bool:
        """Whether ``channel`` connects within ``timeout``.

        With ``fail_fast``, a failed connection attempt (refused, reset: a dead
        member) answers no at once instead of waiting out ``timeout`` through
        gRPC's reconnect backoff, so the call moves on to another endpoint.
        """
        state = channel.get_state(try_to_connect=True)
        with anyio.move_on_after(timeout):
            while state != grpc.ChannelConnectivity.READY:
                if state == grpc.ChannelConnectivity.SHUTDOWN or (
                    fail_fast and state == grpc.ChannelConnectivity.TRANSIENT_FAILURE
                ):
                    return False
                try:
                    await await_call(channel.wait_for_state_change(state), "a connection wait")
                except UnavailableError:
                    return False
                state = channel.get_state(try_to_connect=True)
            return True
        return False

    async def _backoff(self, failed: str, attempt: int) -> None:
        """Switch endpoints; after a full round of failures, pause briefly before the next."""
        self._pool.fail_over(failed)
        if attempt and attempt % len(self._pool.endpoints) == 0:
            await anyio.sleep(min(0.05 * attempt, 0.5))  # retry pacing, not synchronisation

    # ---- KV ----

    async def get(
        self,
        key: Key,
        range_end: Key | None = None,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> pb.RangeResponse:
        """Range over ``key`` (or ``[key, range_end)``); options as :func:`txn.range_request`."""
        request = range_request(key, range_end, **options)
        return await self.range(request, timeout=timeout)

    async def range(
        self, request: pb.RangeRequest, *, timeout: float | None = None
    ) -> pb.RangeResponse:
        return await self._unary(
            "/etcdserverpb.KV/Range", request, pb.RangeResponse, timeout=timeout, idempotent=True
        )

    async def put(
        self, key: Key, value: Key, *, timeout: float | None = None, **options: Any
    ) -> pb.PutResponse:
        """Put ``value`` at ``key``; options: lease, prev_kv, ignore_value, ignore_lease."""
        request = put_request(key, value, **options)
        return await self._unary(
            "/etcdserverpb.KV/Put", request, pb.PutResponse, timeout=timeout, idempotent=False
        )

    async def delete(
        self,
        key: Key,
        range_end: Key | None = None,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> pb.DeleteRangeResponse:
        """Delete ``key`` (or a range); options: prefix, from_key, prev_kv."""
        request = delete_request(key, range_end, **options)
        return await self._unary(
            "/etcdserverpb.KV/DeleteRange",
            request,
            pb.DeleteRangeResponse,
            timeout=timeout,
            idempotent=False,
        )

    def txn(self, *, timeout: float | None = None) -> Txn:
        """Start a transaction: ``client.txn().when(...).then(...).otherwise(...).commit()``."""

        async def commit(request: pb.TxnRequest) -> pb.TxnResponse:
            return await self.txn_request(request, timeout=timeout)

        return Txn(commit)

    async def txn_request(
        self, request: pb.TxnRequest, *, timeout: float | None = None
    ) -> pb.TxnResponse:
        read_only = all(
            op.WhichOneof("request") == "request_range" for op in request.success
        ) and all(op.WhichOneof("request") == "request_range" for op in request.failure)
        return await self._unary(
            "/etcdserverpb.KV/Txn", request, pb.TxnResponse, timeout=timeout, idempotent=read_only
        )

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> pb.CompactionResponse:
        request = pb.CompactionRequest(revision=revision, physical=physical)
        return await self._unary(
            "/etcdserverpb.KV/Compact",
            request,
            pb.CompactionResponse,
            timeout=timeout,
            idempotent=False,
        )

    # ---- Lease ----

    async def grant(
        self, ttl: int, *, lease_id: int = 0, timeout: float | None = None
    ) -> pb.LeaseGrantResponse:
        """Grant a lease of ``ttl`` seconds (ID chosen by the server unless ``lease_id``)."""
        request = pb.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        response = await self._unary(
            "/etcdserverpb.Lease/LeaseGrant",
            request,
            pb.LeaseGrantResponse,
            timeout=timeout,
            idempotent=False,
        )
        if response.error:
            raise EtcdError(response.error)
        return response

    async def revoke(
        self, lease_id: int, *, timeout: float | None = None
    ) -> pb.LeaseRevokeResponse:
        return await self._unary(
            "/etcdserverpb.Lease/LeaseRevoke",
            pb.LeaseRevokeRequest(ID=lease_id),
            pb.LeaseRevokeResponse,
            timeout=timeout,
            idempotent=False,
        )

    async def time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> pb.LeaseTimeToLiveResponse:
        """Remaining TTL (``TTL == -1`` when the lease is gone), granted TTL, attached keys."""
        return await self._unary(
            "/etcdserverpb.Lease/LeaseTimeToLive",
            pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys),
            pb.LeaseTimeToLiveResponse,
            timeout=timeout,
            idempotent=True,
        )

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        response = await self._unary(
            "/etcdserverpb.Lease/LeaseLeases",
            pb.LeaseLeasesRequest(),
            pb.LeaseLeasesResponse,
            timeout=timeout,
            idempotent=True,
        )
        return [status.ID for status in response.leases]

    def keepalive(self, lease_id: int) -> LeaseKeepAlive:
        """Keep ``lease_id`` alive while the returned context is open.

        ``async with client.keepalive(lease.ID) as ka:`` renews at a third of
        the TTL over one stream (reconnecting to other endpoints as needed);
        ``ka.lost`` is set once the lease is gone or its TTL ran out locally.
        """
        return LeaseKeepAlive(self._pool, lease_id, self._tasks(), self._auth)

    async def keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew once; return the new TTL. Raises LeaseNotFoundError if the lease is gone."""
        return await LeaseKeepAlive.renew_once(
            self._pool, lease_id, self.default_timeout if timeout is None else timeout, self._auth
        )

    # ---- Watch ----

    def watch(
        self,
        key: Key,
        range_end: Key | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
    ) -> Watch:
        """Watch a key or range; ``async with client.watch(...) as w: async for batch in w``.

        All watches of a client share one gRPC stream. After a broken stream
        the watch resumes on another endpoint from the revision after the last
        one it delivered, so no event is skipped or repeated. A start revision
        that has been compacted raises :class:`CompactedError` from the iterator.
        """
        if self._watch_hub is None:
            self._watch_hub = WatchHub(self._pool, self._tasks(), self._auth)
        filters = []
        if no_put:
            filters.append(pb.WatchCreateRequest.NOPUT)
        if no_delete:
            filters.append(pb.WatchCreateRequest.NODELETE)
        request = pb.WatchCreateRequest(
            key=to_bytes(key),
            range_end=resolve_range_end(key, range_end, prefix, from_key),
            start_revision=start_revision,
            prev_kv=prev_kv,
            filters=filters,
            progress_notify=progress_notify,
        )
        return Watch(self._watch_hub, request)

    async def request_progress(self) -> None:
        """Ask the server for a progress notification on the shared watch stream."""
        if self._watch_hub is not None:
            await self._watch_hub.request_progress()

    # ---- Cluster and Maintenance ----

    async def member_list(
        self, *, linearizable: bool = False, timeout: float | None = None
    ) -> pb.MemberListResponse:
        return await self._unary(
            "/etcdserverpb.Cluster/MemberList",
            pb.MemberListRequest(linearizable=linearizable),
            pb.MemberListResponse,
            timeout=timeout,
            idempotent=True,
        )

    async def status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> pb.StatusResponse:
        """Status of ``endpoint`` (no failover), or of whichever endpoint answers."""
        return await self._unary(
            "/etcdserverpb.Maintenance/Status",
            pb.StatusRequest(),
            pb.StatusResponse,
            timeout=timeout,
            idempotent=True,
            endpoint=endpoint,
        )

    async def hash_kv(
        self, endpoint: str, revision: int = 0, *, timeout: float | None = None
    ) -> pb.HashKVResponse:
        """Hash of ``endpoint``'s key space up to ``revision``, to compare members."""
        return await self._unary(
            "/etcdserverpb.Maintenance/HashKV",
            pb.HashKVRequest(revision=revision),
            pb.HashKVResponse,
            timeout=timeout,
            idempotent=True,
            endpoint=endpoint,
        )

    async def defragment(
        self, endpoint: str, *, timeout: float | None = None
    ) -> pb.DefragmentResponse:
        """Defragment ``endpoint``'s backend (one member; it stalls while it runs)."""
        return await self._unary(
            "/etcdserverpb.Maintenance/Defragment",
            pb.DefragmentRequest(),
            pb.DefragmentResponse,
            timeout=timeout,
            idempotent=False,
            endpoint=endpoint,
        )

    async def move_leader(
        self, target_id: int, *, endpoint: str, timeout: float | None = None
    ) -> pb.MoveLeaderResponse:
        """Ask the leader at ``endpoint`` to hand leadership to member ``target_id``."""
        return await self._unary(
            "/etcdserverpb.Maintenance/MoveLeader",
            pb.MoveLeaderRequest(targetID=target_id),
            pb.MoveLeaderResponse,
            timeout=timeout,
            idempotent=False,
            endpoint=endpoint,
        )
