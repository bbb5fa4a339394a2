"""Applying committed entries: the envelope of a proposal, dispatch by request type, quota.

A NORMAL entry's data is a ``peerpb.Request``: the request id its proposer
waits on, one etcd request and, for a client's request, its ``proposer`` (the
user and the auth revision it was checked at, from :data:`PROPOSER`).
:data:`REQUEST_FIELDS` is the one table of request types this member
replicates. Store requests go to the MVCC store, auth requests to the auth
store; a member's published attributes go to the membership. With auth
enabled, a client's write is checked again here against the user's
permissions at apply time, as etcd's auth applier does. Like etcd's capped
applier, every member judges its own backend against the quota when it
applies a write: the member that crosses it first raises the NOSPACE alarm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from contextvars import ContextVar

from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2
from kvstore._pb.wire import varint
from kvstore.auth.requests import check_request
from kvstore.auth.store import AUTH_REQUESTS, NOBODY, AuthInfo, AuthStore
from kvstore.errors import NoSpaceError, RequestError
from kvstore.mvcc.store import MVCCStore, costs_space, quota_cost
from kvstore.server.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_FIELDS: dict[type[Message], str] = {
    rpc_pb2.PutRequest: "put",
    rpc_pb2.DeleteRangeRequest: "delete_range",
    rpc_pb2.TxnRequest: "txn",
    rpc_pb2.CompactionRequest: "compaction",
    rpc_pb2.LeaseGrantRequest: "lease_grant",
    rpc_pb2.LeaseRevokeRequest: "lease_revoke",
    rpc_pb2.LeaseCheckpointRequest: "lease_checkpoint",
    rpc_pb2.AlarmRequest: "alarm",
    peer_pb2.MemberAttributes: "member_attributes",
    rpc_pb2.AuthEnableRequest: "auth_enable",
    rpc_pb2.AuthDisableRequest: "auth_disable",
    rpc_pb2.AuthStatusRequest: "auth_status",
    peer_pb2.AuthenticateInternal: "authenticate",
    rpc_pb2.AuthUserAddRequest: "auth_user_add",
    rpc_pb2.AuthUserDeleteRequest: "auth_user_delete",
    rpc_pb2.AuthUserChangePasswordRequest: "auth_user_change_password",
    rpc_pb2.AuthUserGrantRoleRequest: "auth_user_grant_role",
    rpc_pb2.AuthUserGetRequest: "auth_user_get",
    rpc_pb2.AuthUserListRequest: "auth_user_list",
    rpc_pb2.AuthUserRevokeRoleRequest: "auth_user_revoke_role",
    rpc_pb2.AuthRoleAddRequest: "auth_role_add",
    rpc_pb2.AuthRoleGetRequest: "auth_role_get",
    rpc_pb2.AuthRoleListRequest: "auth_role_list",
    rpc_pb2.AuthRoleDeleteRequest: "auth_role_delete",
    rpc_pb2.AuthRoleGrantPermissionRequest: "auth_role_grant_permission",
    rpc_pb2.AuthRoleRevokePermissionRequest: "auth_role_revoke_permission",
}
"""Each replicated request type and its field in the ``peerpb.Request`` envelope."""

_FIELD_TAGS = {
    cls: (peer_pb2.Request.DESCRIPTOR.fields_by_name[name].number << 3) | 2
    for cls, name in REQUEST_FIELDS.items()
}
_ID_TAG = 0x08  # field 1 (id), varint
_PROPOSER_TAG = (peer_pb2.Request.DESCRIPTOR.fields_by_name["proposer"].number << 3) | 2

PROPOSER: ContextVar[AuthInfo | None] = ContextVar("proposer", default=None)
"""Who the client request being served is from: set around each client call by the access
guard (:mod:`kvstore.server.services.access`), so its proposals carry it. Unset for the member's
own proposals (lease expiry, alarms), which apply unchecked."""


_DELETE_RANGE_TAG = varint(_FIELD_TAGS[rpc_pb2.DeleteRangeRequest])


def encode_proposal(request_id: int, request: Message) -> bytes:
    """The entry data for ``request``: a ``peerpb.Request``, encoded without copying it."""
    body = request.SerializeToString()
    head = varint(_FIELD_TAGS[type(request)]) + varint(len(body))
    if request_id:
        head = bytes((_ID_TAG,)) + varint(request_id) + head
    proposer = PROPOSER.get()
    if proposer is None:
        return head + body
    return head + body + _proposer_field(proposer)


_NOBODY_FIELD = varint(_PROPOSER_TAG) + b"\x00"


def _proposer_field(info: AuthInfo) -> bytes:
    if info is NOBODY:
        return _NOBODY_FIELD
    raw = peer_pb2.Proposer(username=info.username, auth_revision=info.revision)
    body = raw.SerializeToString()
    return varint(_PROPOSER_TAG) + varint(len(body)) + body


def nospace_alarm(member_id: int) -> rpc_pb2.AlarmRequest:
    """The request that raises this member's NOSPACE alarm."""
    return rpc_pb2.AlarmRequest(
        action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=member_id, alarm=rpc_pb2.NOSPACE
    )


class Applier:
    def __init__(
        self,
        store: MVCCStore,
        quota_bytes: int | None,
        propose_nowait: Callable[[Message], None],
        on_member_attributes: Callable[[int, peer_pb2.MemberAttributes], None],
        alarm_interval: float,
        metrics: Metrics,
        auth: AuthStore,
    ) -> None:
        self.store = store
        self.auth = auth
        self.quota_bytes = quota_bytes
        self.member_id = 0
        self._propose_nowait = propose_nowait
        self._on_member_attributes = on_member_attributes
        self._alarm_interval = alarm_interval
        self._metrics = metrics
        self._nospace_proposed_at = -float("inf")

    def apply(self, index: int, data: bytes) -> tuple[int, object]:
        """Apply one NORMAL entry; returns (request id, response or RequestError or None)."""
        if not data:
            return 0, None  # a new leader's empty entry
        env = peer_pb2.Request.FromString(data)
        field = env.WhichOneof("request")
        if field is None:
            return env.id, None
        request = getattr(env, field)
        if field == "member_attributes":
            self._on_member_attributes(index, request)
            return env.id, None
        store = self.store
        if type(request) in AUTH_REQUESTS:
            return env.id, self._apply_auth(index, env, request)
        try:
            over_quota = self._over_quota(request)
            if self.auth.enabled and env.HasField("proposer"):
                # A client's write: judged again here, at the auth state of this entry.
                if not store.claim(index):
                    return env.id, None
                check_request(self.auth, _proposer(env), request, self._lease_keys)
                result = store.execute(request)
            else:
                result = store.apply(index, request)
        except RequestError as exc:
            return env.id, exc
        if result is None:
            return env.id, None  # applied before a restart
        if over_quota:
            return env.id, self._on_over_quota()
        self._metrics.count_applied(field, result)
        return env.id, result

    @staticmethod
    def may_take_long(data: bytes) -> bool:
        """Whether the entry is a DeleteRange, whose apply may touch any number of keys
        (and so goes through :meth:`apply_in_slices`); read from the envelope's first
        bytes without decoding it."""
        i = 0
        if data[:1] == bytes((_ID_TAG,)):
            i = 1
            while i < len(data) and data[i] & 0x80:
                i += 1
            i += 1
        return data.startswith(_DELETE_RANGE_TAG, i)

    def apply_in_slices(self, index: int, data: bytes) -> Generator[None, None, tuple[int, object]]:
        """``apply`` of a DeleteRange entry, yielding between slices of its keys (see
        :meth:`MVCCStore.apply_in_slices`)."""
        env = peer_pb2.Request.FromString(data)
        assert env.WhichOneof("request") == "delete_range"
        request = env.delete_range
        try:
            if self.auth.enabled and env.HasField("proposer"):
                # A client's write: judged here, at the auth state of this entry (as apply).
                if index <= self.store.consistent_index:
                    return env.id, None
                try:
                    check_request(self.auth, _proposer(env), request, self._lease_keys)
                except RequestError:
                    self.store.claim(index)
                    raise
            result = yield from self.store.apply_in_slices(index, request)
        except RequestError as exc:
            return env.id, exc
        if result is None:
            return env.id, None  # applied before a restart
        self._metrics.count_applied("delete_range", result)
        return env.id, result

    def _apply_auth(self, index: int, env: peer_pb2.Request, request: Message) -> object:
        store = self.store
        if not store.claim(index):
            return None  # applied before a restart
        info = _proposer(env) if env.HasField("proposer") else None
        try:
            response = self.auth.apply(request, info, index)
        except RequestError as exc:
            return exc
        response.header.revision = store.current_revision  # type: ignore[attr-defined]
        return response

    def _lease_keys(self, lease_id: int) -> Iterable[bytes] | None:
        lease = self.store.lessor.lookup(lease_id)
        return None if lease is None else sorted(lease.keys)

    def _over_quota(self, request: Message) -> bool:
        """Whether this member's backend has no room for ``request`` (etcd's apply-time check)."""
        quota = self.quota_bytes
        return (
            quota is not None
            and costs_space(request)
            and not self.store.space_exhausted()
            and self.store.db_size() + quota_cost(request) >= quota
        )

    def _on_over_quota(self) -> NoSpaceError:
        """The write is applied everywhere, but here the backend is full: raise the alarm."""
        now = time.monotonic()
        if now - self._nospace_proposed_at > self._alarm_interval:
            self._nospace_proposed_at = now
            log.warning("backend exceeds its quota; raising a NOSPACE alarm")
            self._propose_nowait(nospace_alarm(self.member_id))
        return NoSpaceError()


def _proposer(env: peer_pb2.Request) -> AuthInfo:
    p = env.proposer
    return AuthInfo(p.username, p.auth_revision)
