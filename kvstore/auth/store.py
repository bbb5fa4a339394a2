"""The auth store: users, roles, the enabled flag and the auth revision, as etcd keeps them.

State lives in the backend's ``auth``, ``authUsers`` and ``authRoles``
buckets with etcd's keys and encodings (``authpb.User``/``authpb.Role``), in
the same LMDB transaction as the applied index, so it survives restarts,
travels in Raft snapshots and backups, and is the same on every member. It
changes only in :meth:`AuthStore.apply` (the raft loop); every member keeps a
copy in memory (users, roles, each user's merged permissions) for the checks.

The rules are etcd's: ``root`` may do everything; enabling needs a ``root``
user holding the ``root`` role; every change bumps the auth revision; a
request checked at an older revision is refused as stale.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from kvstore._pb.authpb import auth_pb2
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2
from kvstore.auth.perms import UserPermissions, is_valid_grant
from kvstore.auth.tokens import TokenProvider
from kvstore.errors import (
    AuthFailedError,
    AuthNotEnabledError,
    AuthOldRevisionError,
    InvalidAuthMgmtError,
    NoPasswordUserError,
    PermissionDeniedError,
    PermissionNotGivenError,
    PermissionNotGrantedError,
    RoleAlreadyExistError,
    RoleEmptyError,
    RoleNotFoundError,
    RoleNotGrantedError,
    RootRoleNotExistError,
    RootUserNotExistError,
    UserAlreadyExistError,
    UserEmptyError,
    UserNotFoundError,
)
from kvstore.mvcc.backend import Backend

log = logging.getLogger(__name__)

ROOT = "root"
"""The user and the role that may do everything."""
ENABLED_KEY = b"authEnabled"
REVISION_KEY = b"authRevision"
_U64 = struct.Struct(">Q")
_ON, _OFF = b"\x01", b"\x00"


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """Who a request comes from, and the auth revision it was judged at (0: nobody)."""

    username: str
    revision: int


NOBODY = AuthInfo("", 0)


def _has_root_role(user: auth_pb2.User) -> bool:
    return ROOT in user.roles


class AuthStore:
    """One member's view of the replicated auth state. Single-threaded: the event loop's."""

    def __init__(self, backend: Backend, tokens: TokenProvider) -> None:
        self._backend = backend
        self.tokens = tokens
        self.enabled = False
        self.revision = 1
        self.users: dict[str, auth_pb2.User] = {}
        self.roles: dict[str, auth_pb2.Role] = {}
        self._perms: dict[str, UserPermissions] = {}
        self.on_change: list[Callable[[], None]] = []
        """Called after every applied change of the auth state (and after a reload)."""
        self.load()

    # ------------------------------------------------------------------ state

    def load(self) -> None:
        """(Re)read the state from the backend: at start and after a snapshot replaced it."""
        b = self._backend
        was_enabled = self.enabled
        self.enabled = b.get_auth(b.auth_db, ENABLED_KEY) == _ON
        raw = b.get_auth(b.auth_db, REVISION_KEY)
        # A store that never had auth holds no revision; etcd starts it at 1.
        self.revision = _U64.unpack(raw)[0] if raw is not None else 1
        self.users = {
            k.decode(): auth_pb2.User.FromString(v) for k, v in b.iter_auth(b.auth_users_db)
        }
        self.roles = {
            k.decode(): auth_pb2.Role.FromString(v) for k, v in b.iter_auth(b.auth_roles_db)
        }
        self._refresh_permissions()
        if self.enabled and not was_enabled:
            self.tokens.enable()
        elif was_enabled and not self.enabled:
            self.tokens.disable()
        self._changed()

    def _refresh_permissions(self) -> None:
        roles = self.roles
        self._perms = {
            name: UserPermissions.of(roles[r] for r in user.roles if r in roles)
            for name, user in self.users.items()
        }

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def _apply_change(self, invalidate_user: str | None = None) -> None:
        """After a change of users or roles: a new auth revision, permissions recomputed,
        the user's tokens dropped (when given), and whoever listens told."""
        self._bump()
        self._refresh_permissions()
        if invalidate_user is not None:
            self.tokens.invalidate_user(invalidate_user)
        self._changed()

    def _bump(self) -> None:
        """Every change moves the auth revision (stored with the change)."""
        self.revision += 1
        b = self._backend
        b.put_auth(b.auth_db, REVISION_KEY, _U64.pack(self.revision))

    def _put_user(self, user: auth_pb2.User) -> None:
        b = self._backend
        b.put_auth(b.auth_users_db, user.name, user.SerializeToString())
        self.users[user.name.decode()] = user

    def _put_role(self, role: auth_pb2.Role) -> None:
        b = self._backend
        b.put_auth(b.auth_roles_db, role.name, role.SerializeToString())
        self.roles[role.name.decode()] = role

    def _user(self, name: str) -> auth_pb2.User:
        user = self.users.get(name)
        if user is None:
            raise UserNotFoundError()
        return user

    def _role(self, name: str) -> auth_pb2.Role:
        role = self.roles.get(name)
        if role is None:
            raise RoleNotFoundError()
        return role

    # ------------------------------------------------------------------ checks

    def password_of(self, name: str) -> tuple[bytes, int]:
        """A login's first step (any member): the stored hash and the revision it was read at.

        Raises as etcd does: auth not enabled; no such user, or one without password.
        """
        if not self.enabled:
            raise AuthNotEnabledError()
        user = self.users.get(name)
        if user is None:
            raise AuthFailedError()
        if user.options.no_password:
            raise NoPasswordUserError()
        return user.password, self.revision

    def check_admin(self, info: AuthInfo | None) -> None:
        """Raise unless auth is off or ``info`` names a user with the root role."""
        if not self.enabled:
            return
        if info is None or not info.username:
            raise UserEmptyError()
        user = self.users.get(info.username)
        if user is None:
            raise UserNotFoundError()
        if not _has_root_role(user):
            raise PermissionDeniedError()

    def is_admin(self, info: AuthInfo | None) -> bool:
        try:
            self.check_admin(info)
        except (UserEmptyError, UserNotFoundError, PermissionDeniedError):
            return False
        return True

    def require_user(self, info: AuthInfo | None) -> None:
        """Raise unless auth is off or the request names someone (etcd's requireAuthInfo)."""
        if self.enabled and info is None:
            raise UserEmptyError()

    def _check(self, info: AuthInfo | None, key: bytes, range_end: bytes, write: bool) -> None:
        if not self.enabled:
            return
        if info is None or info.revision == 0:
            raise UserEmptyError()
        if info.revision < self.revision:
            raise AuthOldRevisionError()
        user = self.users.get(info.username)
        if user is None:
            raise PermissionDeniedError()
        if _has_root_role(user):
            return
        perms = self._perms.get(info.username)
        keys = None if perms is None else (perms.write if write else perms.read)
        if keys is None or not keys.covers(key, range_end):
            raise PermissionDeniedError()

    def check_read(self, info: AuthInfo | None, key: bytes, range_end: bytes = b"") -> None:
        self._check(info, key, range_end, write=False)

    def check_write(self, info: AuthInfo | None, key: bytes, range_end: bytes = b"") -> None:
        self._check(info, key, range_end, write=True)

    def has_role(self, username: str, role: str) -> bool:
        user = self.users.get(username)
        return user is not None and role in user.roles

    # ------------------------------------------------------------------ apply

    def apply(self, request: Message, info: AuthInfo | None, index: int) -> Message:
        """Apply one replicated auth request (every member, in log order).

        ``info`` is who proposed it (None: the member itself); admin requests
        need the root role once auth is enabled. Raises etcd's errors.
        """
        handler = _APPLY.get(type(request))
        if handler is None:
            raise TypeError(f"not an auth request: {type(request).__name__}")
        admin, apply = handler
        if admin:
            self.check_admin(info)
        response = apply(self, request, info, index)
        return response

    def _enable(self, r: rpc_pb2.AuthEnableRequest, info: AuthInfo | None, index: int) -> Message:
        if self.enabled:
            return rpc_pb2.AuthEnableResponse()
        root = self.users.get(ROOT)
        if root is None:
            raise RootUserNotExistError()
        if not _has_root_role(root):
            raise RootRoleNotExistError()
        b = self._backend
        b.put_auth(b.auth_db, ENABLED_KEY, _ON)
        self.enabled = True
        self.tokens.enable()
        log.info("authentication enabled")
        self._changed()
        return rpc_pb2.AuthEnableResponse()

    def _disable(self, r: rpc_pb2.AuthDisableRequest, info: AuthInfo | None, index: int) -> Message:
        if self.enabled:
            b = self._backend
            b.put_auth(b.auth_db, ENABLED_KEY, _OFF)
            self._bump()
            self.enabled = False
            self.tokens.disable()
            log.info("authentication disabled")
            self._changed()
        return rpc_pb2.AuthDisableResponse()

    def _status(self, r: rpc_pb2.AuthStatusRequest, info: AuthInfo | None, index: int) -> Message:
        return rpc_pb2.AuthStatusResponse(enabled=self.enabled, authRevision=self.revision)

    def _authenticate(
        self, r: peer_pb2.AuthenticateInternal, info: AuthInfo | None, index: int
    ) -> Message:
        if not self.enabled:
            raise AuthNotEnabledError()
        user = self.users.get(r.name)
        if user is None or user.options.no_password:
            raise AuthFailedError()
        # The password was checked by the member that took the login, before proposing.
        token = self.tokens.assign(r.name, self.revision, r.simple_token, index)
        return rpc_pb2.AuthenticateResponse(token=token)

    def _user_add(
        self, r: rpc_pb2.AuthUserAddRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if not r.name:
            raise UserEmptyError()
        if r.name in self.users:
            raise UserAlreadyExistError()
        password = b""
        if not r.options.no_password:
            password = _decoded_hash(r.hashedPassword)
        self._put_user(
            auth_pb2.User(
                name=r.name.encode(),
                password=password,
                options=auth_pb2.UserAddOptions(no_password=r.options.no_password),
            )
        )
        self._apply_change()
        log.info("added user %r", r.name)
        return rpc_pb2.AuthUserAddResponse()

    def _user_delete(
        self, r: rpc_pb2.AuthUserDeleteRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if self.enabled and r.name == ROOT:
            raise InvalidAuthMgmtError()
        self._user(r.name)
        b = self._backend
        b.delete_auth(b.auth_users_db, r.name.encode())
        del self.users[r.name]
        self._apply_change(invalidate_user=r.name)
        log.info("deleted user %r", r.name)
        return rpc_pb2.AuthUserDeleteResponse()

    def _user_change_password(
        self, r: rpc_pb2.AuthUserChangePasswordRequest, info: AuthInfo | None, index: int
    ) -> Message:
        user = self._user(r.name)
        updated = auth_pb2.User()
        updated.CopyFrom(user)
        updated.password = b"" if user.options.no_password else _decoded_hash(r.hashedPassword)
        self._put_user(updated)
        self._apply_change(invalidate_user=r.name)
        log.info("changed the password of user %r", r.name)
        return rpc_pb2.AuthUserChangePasswordResponse()

    def _user_grant_role(
        self, r: rpc_pb2.AuthUserGrantRoleRequest, info: AuthInfo | None, index: int
    ) -> Message:
        user = self._user(r.user)
        if r.role != ROOT:
            self._role(r.role)
        if r.role in user.roles:
            return rpc_pb2.AuthUserGrantRoleResponse()  # etcd ignores a repeated grant
        updated = auth_pb2.User()
        updated.CopyFrom(user)
        roles = sorted([*user.roles, r.role])
        del updated.roles[:]
        updated.roles.extend(roles)
        self._put_user(updated)
        self._apply_change()
        log.info("granted role %r to user %r", r.role, r.user)
        return rpc_pb2.AuthUserGrantRoleResponse()

    def _user_get(
        self, r: rpc_pb2.AuthUserGetRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if not self.is_admin(info) and (info is None or info.username != r.name):
            self.check_admin(info)  # raises etcd's error for this caller
        user = self._user(r.name)
        return rpc_pb2.AuthUserGetResponse(roles=list(user.roles))

    def _user_list(
        self, r: rpc_pb2.AuthUserListRequest, info: AuthInfo | None, index: int
    ) -> Message:
        return rpc_pb2.AuthUserListResponse(users=sorted(self.users))

    def _user_revoke_role(
        self, r: rpc_pb2.AuthUserRevokeRoleRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if self.enabled and r.name == ROOT and r.role == ROOT:
            raise InvalidAuthMgmtError()
        user = self._user(r.name)
        if r.role not in user.roles:
            raise RoleNotGrantedError()
        updated = auth_pb2.User()
        updated.CopyFrom(user)
        del updated.roles[:]
        updated.roles.extend(role for role in user.roles if role != r.role)
        self._put_user(updated)
        self._apply_change()
        log.info("revoked role %r from user %r", r.role, r.name)
        return rpc_pb2.AuthUserRevokeRoleResponse()

    def _role_add(
        self, r: rpc_pb2.AuthRoleAddRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if not r.name:
            raise RoleEmptyError()
        if r.name in self.roles:
            raise RoleAlreadyExistError()
        self._put_role(auth_pb2.Role(name=r.name.encode()))
        self._bump()
        self._changed()
        log.info("added role %r", r.name)
        return rpc_pb2.AuthRoleAddResponse()

    def _role_get(
        self, r: rpc_pb2.AuthRoleGetRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if not self.is_admin(info) and not (
            info is not None and self.has_role(info.username, r.role)
        ):
            self.check_admin(info)
        role = self._role(r.role)
        return rpc_pb2.AuthRoleGetResponse(perm=list(role.keyPermission))

    def _role_list(
        self, r: rpc_pb2.AuthRoleListRequest, info: AuthInfo | None, index: int
    ) -> Message:
        return rpc_pb2.AuthRoleListResponse(roles=sorted(self.roles))

    def _role_delete(
        self, r: rpc_pb2.AuthRoleDeleteRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if self.enabled and r.role == ROOT:
            raise InvalidAuthMgmtError()
        self._role(r.role)
        b = self._backend
        b.delete_auth(b.auth_roles_db, r.role.encode())
        del self.roles[r.role]
        for user in list(self.users.values()):
            if r.role in user.roles:
                updated = auth_pb2.User()
                updated.CopyFrom(user)
                del updated.roles[:]
                updated.roles.extend(role for role in user.roles if role != r.role)
                self._put_user(updated)
        self._apply_change()
        log.info("deleted role %r", r.role)
        return rpc_pb2.AuthRoleDeleteResponse()

    def _role_grant_permission(
        self, r: rpc_pb2.AuthRoleGrantPermissionRequest, info: AuthInfo | None, index: int
    ) -> Message:
        if not r.HasField("perm"):
            raise PermissionNotGivenError()
        if not is_valid_grant(r.perm.key, r.perm.range_end):
            raise InvalidAuthMgmtError()
        role = self._role(r.name)
        updated = auth_pb2.Role()
        updated.CopyFrom(role)
        # As etcd: the first grant at or after the key; the same range gets the new type.
        first = next((p for p in updated.keyPermission if p.key >= r.perm.key), None)
        if first is not None and first.key == r.perm.key and first.range_end == r.perm.range_end:
            first.permType = r.perm.permType
        else:
            perms = [*updated.keyPermission, r.perm]
            perms.sort(key=lambda p: p.key)  # etcd keeps them sorted by key (stable)
            del updated.keyPermission[:]
            updated.keyPermission.extend(perms)
        self._put_role(updated)
        self._apply_change()
        log.info("granted a permission to role %r", r.name)
        return rpc_pb2.AuthRoleGrantPermissionResponse()

    def _role_revoke_permission(
        self, r: rpc_pb2.AuthRoleRevokePermissionRequest, info: AuthInfo | None, index: int
    ) -> Message:
        role = self._role(r.role)
        kept = [p for p in role.keyPermission if p.key != r.key or p.range_end != r.range_end]
        if len(kept) == len(role.keyPermission):
            raise PermissionNotGrantedError()
        updated = auth_pb2.Role(name=role.name, keyPermission=kept)
        self._put_role(updated)
        self._apply_change()
        log.info("revoked a permission from role %r", r.role)
        return rpc_pb2.AuthRoleRevokePermissionResponse()


def _decoded_hash(hashed: str) -> bytes:
    """The bcrypt hash a proposal carries (base64, as etcd sends it)."""
    try:
        return base64.b64decode(hashed, validate=True)
    except (binascii.Error, ValueError):
        raise AuthFailedError() from None


_Apply = Callable[[AuthStore, Any, AuthInfo | None, int], Message]

_APPLY: dict[type[Message], tuple[bool, _Apply]] = {
    rpc_pb2.AuthEnableRequest: (True, AuthStore._enable),
    rpc_pb2.AuthDisableRequest: (True, AuthStore._disable),
    rpc_pb2.AuthStatusRequest: (False, AuthStore._status),
    peer_pb2.AuthenticateInternal: (False, AuthStore._authenticate),
    rpc_pb2.AuthUserAddRequest: (True, AuthStore._user_add),
    rpc_pb2.AuthUserDeleteRequest: (True, AuthStore._user_delete),
    rpc_pb2.AuthUserChangePasswordRequest: (True, AuthStore._user_change_password),
    rpc_pb2.AuthUserGrantRoleRequest: (True, AuthStore._user_grant_role),
    rpc_pb2.AuthUserGetRequest: (False, AuthStore._user_get),
    rpc_pb2.AuthUserListRequest: (True, AuthStore._user_list),
    rpc_pb2.AuthUserRevokeRoleRequest: (True, AuthStore._user_revoke_role),
    rpc_pb2.AuthRoleAddRequest: (True, AuthStore._role_add),
    rpc_pb2.AuthRoleGetRequest: (False, AuthStore._role_get),
    rpc_pb2.AuthRoleListRequest: (True, AuthStore._role_list),
    rpc_pb2.AuthRoleDeleteRequest: (True, AuthStore._role_delete),
    rpc_pb2.AuthRoleGrantPermissionRequest: (True, AuthStore._role_grant_permission),
    rpc_pb2.AuthRoleRevokePermissionRequest: (True, AuthStore._role_revoke_permission),
}
"""Every replicated auth request: (needs the root role once enabled, how it applies)."""

AUTH_REQUESTS = frozenset(_APPLY)
