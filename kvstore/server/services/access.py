"""Access control of client calls: who is calling, and may they. The one place it is decided.

:func:`guard` wraps every method of the table (:func:`method_table`): it finds
the caller (a token in the ``token`` or ``authorization`` metadata, or with
``--client-cert-auth`` the client certificate's Common Name), applies the
method's rule from :data:`RULES` as etcd's API layer does, and marks the
caller's proposals with :data:`~kvstore.server.applier.PROPOSER` so that every
member checks the write again when it applies it. Reads are checked before
and, as etcd does, refused as stale if the auth store changed meanwhile.
A watch creation is judged by :meth:`Access.watch_refusal`, which the Watch
service asks for each one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.auth.requests import check_request, check_txn
from kvstore.auth.store import NOBODY, AuthInfo, AuthStore
from kvstore.errors import (
    AuthOldRevisionError,
    InvalidAuthTokenError,
    PermissionDeniedError,
    RequestError,
    UserEmptyError,
)
from kvstore.mvcc.store import txn_readonly
from kvstore.rpc import CallContext, Cardinality, Method
from kvstore.server.applier import PROPOSER
from kvstore.server.services.concurrency import GATEWAY_KEY, token_of
from kvstore.server.services.core import Core
from kvstore.server.status import code_of

log = logging.getLogger(__name__)


Rule = Callable[["Access", AuthInfo | None, Any], None]
"""Raises etcd's error when the caller may not make the request (auth enabled)."""


class Access:
    """The auth side of one member's client calls."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.auth: AuthStore = core.node.auth
        self.client_cert_auth = core.cfg.client_tls.client_cert_auth

    # ------------------------------------------------------------------ the caller

    def unapplied_login(self, ctx: CallContext) -> int:
        """The raft index of the caller's login if this member has not applied it yet (else 0).

        A simple token is known to a member once it applies the login; the client may
        have logged in through a member further ahead.
        """
        token = token_of(ctx)
        if token is None:
            return 0
        index = self.auth.tokens.index_of(token)
        return index if index > self.core.node.applied_index else 0

    def caller(self, ctx: CallContext) -> AuthInfo | None:
        """Who makes the call (None: nobody said), as etcd's AuthInfoFromCtx. Auth enabled."""
        auth = self.auth
        token = token_of(ctx)
        if token is not None:
            info = auth.tokens.info(token)
            if info is None:
                raise InvalidAuthTokenError()
            return AuthInfo(info.username, info.revision or auth.revision)
        if self.client_cert_auth and ctx.peer_common_name and GATEWAY_KEY not in ctx.metadata:
            return AuthInfo(ctx.peer_common_name, auth.revision)
        return None

    async def _after_login_applied(self, index: int) -> None:
        await self.core.node.wait_applied(index)

    # ------------------------------------------------------------------ watches

    def watch_refusal(self, ctx: CallContext, create: rpc_pb2.WatchCreateRequest) -> str | None:
        """Why a watch may not be created (etcd's cancel reason), or None if it may."""
        if not self.auth.enabled:
            return None
        try:
            info = self.caller(ctx)
            self.auth.check_read(info or NOBODY, create.key, create.range_end)
        except (InvalidAuthTokenError, AuthOldRevisionError, UserEmptyError) as exc:
            return _as_grpc_error(exc)
        except RequestError:
            return _as_grpc_error(PermissionDeniedError())
        return None

    # ------------------------------------------------------------------ wrapping

    def guard(self, path: str, method: Method) -> Method:
        if path in ANYONE:
            return method
        rule = RULES.get(path)
        if method.cardinality is Cardinality.UNARY:
            handler = self._unary(method.handler, rule, READS.get(path))
        elif method.cardinality is Cardinality.SERVER_STREAM:
            handler = self._server_stream(method.handler, rule)
        else:
            handler = self._bidi_stream(method.handler, rule)
        return Method(method.request_type, handler, method.cardinality)

    def _unary(
        self,
        handler: Callable[..., Any],
        rule: Rule | None,
        is_read: Callable[[Any], bool] | None,
    ) -> Callable[..., Any]:
        auth = self.auth

        def guarded(request: Message, ctx: CallContext) -> Any:
            if not auth.enabled:
                return _as(NOBODY, handler, request, ctx)
            index = self.unapplied_login(ctx)
            if index:
                return self._later(index, checked, request, ctx)
            return checked(request, ctx)

        def checked(request: Message, ctx: CallContext) -> Any:
            info = self.caller(ctx)
            if rule is not None:
                rule(self, info, request)
            result = _as(info or NOBODY, handler, request, ctx)
            if is_read is not None and info is not None and is_read(request):
                return _unless_changed(auth, info.revision, result)
            return result

        return guarded

    async def _later(
        self, index: int, call: Callable[..., Any], request: Message, ctx: CallContext
    ) -> Any:
        await self._after_login_applied(index)
        result = call(request, ctx)
        if isinstance(result, Awaitable):
            return await result
        return result

    def _server_stream(
        self, handler: Callable[..., AsyncIterator[Message]], rule: Rule | None
    ) -> Callable[..., AsyncIterator[Message]]:
        async def guarded(request: Message, ctx: CallContext) -> AsyncIterator[Message]:
            await self._check_stream(ctx, rule, request)
            async for response in handler(request, ctx):
                yield response

        return guarded

    def _bidi_stream(
        self, handler: Callable[..., AsyncIterator[Message]], rule: Rule | None
    ) -> Callable[..., AsyncIterator[Message]]:
        async def guarded(
            requests: AsyncIterator[Message], ctx: CallContext
        ) -> AsyncIterator[Message]:
            async def checked() -> AsyncIterator[Message]:
                async for request in requests:
                    await self._check_stream(ctx, rule, request)
                    yield request

            async for response in handler(checked(), ctx):
                yield response

        return guarded

    async def _check_stream(self, ctx: CallContext, rule: Rule | None, request: Message) -> None:
        if not self.auth.enabled:
            return
        index = self.unapplied_login(ctx)
        if index:
            await self._after_login_applied(index)
        info = self.caller(ctx)
        if rule is not None:
            rule(self, info, request)


def _as_grpc_error(error: RequestError) -> str:
    """The text of etcd's gRPC error, as it puts it in a watch's cancel reason."""
    code = code_of(type(error))
    go_name = "".join(part.capitalize() for part in code.name.split("_"))
    return f"rpc error: code = {go_name} desc = {error.message}"


def _as(info: AuthInfo, handler: Callable[..., Any], request: Message, ctx: CallContext) -> Any:
    """Call the handler with ``info`` as the proposer of whatever it proposes."""
    mark = PROPOSER.set(info)
    try:
        result = handler(request, ctx)
    finally:
        PROPOSER.reset(mark)
    if asyncio.iscoroutine(result):
        return _coroutine_as(info, result)
    return result


async def _coroutine_as(info: AuthInfo, coroutine: Coroutine[Any, Any, Any]) -> Any:
    PROPOSER.set(info)  # this task's own context
    return await coroutine


def _unless_changed(auth: AuthStore, revision: int, result: Any) -> Any:
    """``result``, or etcd's stale-revision error if the auth store changed while reading."""
    if isinstance(result, asyncio.Future):
        checked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(fut: asyncio.Future[Any]) -> None:
            if checked.done():
                return
            if fut.cancelled():
                checked.cancel()
            elif (exc := fut.exception()) is not None:
                checked.set_exception(exc)
            elif auth.revision != revision:
                checked.set_exception(AuthOldRevisionError())
            else:
                checked.set_result(fut.result())

        result.add_done_callback(done)
        return checked
    if asyncio.iscoroutine(result):
        return _coroutine_unless_changed(auth, revision, result)
    return result


async def _coroutine_unless_changed(
    auth: AuthStore, revision: int, coroutine: Coroutine[Any, Any, Any]
) -> Any:
    response = await coroutine
    if auth.revision != revision:
        raise AuthOldRevisionError()
    return response


# ---------------------------------------------------------------------- rules


def _admin(access: Access, info: AuthInfo | None, request: Any) -> None:
    access.auth.check_admin(info)


def _someone(access: Access, info: AuthInfo | None, request: Any) -> None:
    access.auth.require_user(info)


def _range(access: Access, info: AuthInfo | None, request: rpc_pb2.RangeRequest) -> None:
    access.auth.check_read(info or NOBODY, request.key, request.range_end)


def _lease_keys(access: Access) -> Callable[[int], list[bytes] | None]:
    lessor = access.core.node.store.lessor

    def keys(lease_id: int) -> list[bytes] | None:
        lease = lessor.lookup(lease_id)
        return None if lease is None else sorted(lease.keys)

    return keys


def _txn(access: Access, info: AuthInfo | None, request: rpc_pb2.TxnRequest) -> None:
    # A txn with writes is checked when applied; a read-only one is answered here.
    if txn_readonly(request):
        check_txn(access.auth, info or NOBODY, request, _lease_keys(access))


def _lease_revoke(
    access: Access, info: AuthInfo | None, request: rpc_pb2.LeaseRevokeRequest
) -> None:
    access.auth.require_user(info)  # the keys are checked when the revoke applies


def _lease_keys_readable(access: Access, info: AuthInfo | None, lease_ids: list[int]) -> None:
    auth = access.auth
    auth.require_user(info)
    if auth.is_admin(info):
        return
    keys = _lease_keys(access)
    for lease_id in lease_ids:
        for key in keys(lease_id) or ():
            auth.check_read(info, key)


def _time_to_live(
    access: Access, info: AuthInfo | None, request: rpc_pb2.LeaseTimeToLiveRequest
) -> None:
    access.auth.require_user(info)
    if request.keys:
        _lease_keys_readable(access, info, [request.ID])


def _leases(access: Access, info: AuthInfo | None, request: Any) -> None:
    ids = [lease.id for lease in access.core.node.store.lessor.leases()]
    _lease_keys_readable(access, info, ids)


def _keep_alive(
    access: Access, info: AuthInfo | None, request: rpc_pb2.LeaseKeepAliveRequest
) -> None:
    auth = access.auth
    auth.require_user(info)
    if auth.is_admin(info):
        return
    check_request(auth, info, rpc_pb2.LeaseRevokeRequest(ID=request.ID), _lease_keys(access))


def _alarm(access: Access, info: AuthInfo | None, request: rpc_pb2.AlarmRequest) -> None:
    if request.action == rpc_pb2.AlarmRequest.GET:
        access.auth.require_user(info)
    else:
        access.auth.check_admin(info)


KV = "/etcdserverpb.KV/"
LEASE = "/etcdserverpb.Lease/"
MAINTENANCE = "/etcdserverpb.Maintenance/"
CLUSTER = "/etcdserverpb.Cluster/"

RULES: dict[str, Rule] = {
    KV + "Range": _range,
    KV + "Txn": _txn,
    KV + "Compact": _admin,
    LEASE + "LeaseGrant": _someone,
    LEASE + "LeaseRevoke": _lease_revoke,
    LEASE + "LeaseTimeToLive": _time_to_live,
    LEASE + "LeaseLeases": _leases,
    LEASE + "LeaseKeepAlive": _keep_alive,
    MAINTENANCE + "Alarm": _alarm,
    MAINTENANCE + "Status": _someone,
    MAINTENANCE + "Defragment": _admin,
    MAINTENANCE + "Hash": _admin,
    MAINTENANCE + "HashKV": _admin,
    MAINTENANCE + "Snapshot": _admin,
    MAINTENANCE + "MoveLeader": _admin,
    MAINTENANCE + "Downgrade": _admin,
    CLUSTER + "MemberList": _someone,
    CLUSTER + "MemberAdd": _admin,
    CLUSTER + "MemberRemove": _admin,
    CLUSTER + "MemberUpdate": _admin,
    CLUSTER + "MemberPromote": _admin,
}
"""What etcd (3.5, with its later access fixes) asks of the caller before serving each call.

Put, DeleteRange, Txn with writes, LeaseRevoke and the Auth service's calls are
judged when their entry applies; Authenticate needs nobody; Watch creations are
judged by :meth:`Access.watch_refusal`; lock and election calls are served through
the member's own client with the caller's token, so the calls they make are judged.
"""


ANYONE = frozenset({"/etcdserverpb.Auth/Authenticate"})
"""Served without looking at the caller: a login carries no token worth judging (etcd
ignores a stale one sent along with it)."""


def _always(request: Any) -> bool:
    return True


READS: dict[str, Callable[[Any], bool]] = {
    KV + "Range": _always,
    KV + "Txn": txn_readonly,
    LEASE + "LeaseTimeToLive": _always,
    LEASE + "LeaseLeases": _always,
}
"""Answered by this member from its state (when the predicate holds): refused as stale if
the auth store changed while answering."""


def guard_all(core: Core, table: dict[str, Method]) -> dict[str, Method]:
    """The method table with every method guarded; the Watch service asks ``watch_refusal``."""
    access = Access(core)
    core.watch_refusal = access.watch_refusal
    return {path: access.guard(path, method) for path, method in table.items()}
