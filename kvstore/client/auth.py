"""The client's calls of etcd's Auth service (users, roles, enabling auth)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import Message

from kvstore._pb.authpb import auth_pb2
from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore.client.txn import Key, resolve_range_end, to_bytes

R = TypeVar("R", bound=Message)

SERVICE = "/etcdserverpb.Auth/"
PERMISSIONS = {
    "read": auth_pb2.Permission.READ,
    "write": auth_pb2.Permission.WRITE,
    "readwrite": auth_pb2.Permission.READWRITE,
}


class AuthCalls:
    """Mixed into :class:`~kvstore.client.Client`: each method is one Auth call."""

    if TYPE_CHECKING:

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
        ) -> R: ...

    async def _auth_call(self, method: str, request: Message, response_type: type[R]) -> R:
        return await self._unary(
            SERVICE + method, request, response_type, timeout=None, idempotent=False
        )

    async def _auth_read(self, method: str, request: Message, response_type: type[R]) -> R:
        """A call that changes nothing: retried on another member, as etcd's clientv3 does."""
        return await self._unary(
            SERVICE + method, request, response_type, timeout=None, idempotent=True
        )

    async def auth_enable(self) -> pb.AuthEnableResponse:
        return await self._auth_call("AuthEnable", pb.AuthEnableRequest(), pb.AuthEnableResponse)

    async def auth_disable(self) -> pb.AuthDisableResponse:
        return await self._auth_call("AuthDisable", pb.AuthDisableRequest(), pb.AuthDisableResponse)

    async def auth_status(self) -> pb.AuthStatusResponse:
        return await self._auth_read("AuthStatus", pb.AuthStatusRequest(), pb.AuthStatusResponse)

    async def user_add(
        self, name: str, password: str = "", *, no_password: bool = False
    ) -> pb.AuthUserAddResponse:
        request = pb.AuthUserAddRequest(
            name=name, password=password, options=auth_pb2.UserAddOptions(no_password=no_password)
        )
        return await self._auth_call("UserAdd", request, pb.AuthUserAddResponse)

    async def user_delete(self, name: str) -> pb.AuthUserDeleteResponse:
        return await self._auth_call(
            "UserDelete", pb.AuthUserDeleteRequest(name=name), pb.AuthUserDeleteResponse
        )

    async def user_change_password(
        self, name: str, password: str
    ) -> pb.AuthUserChangePasswordResponse:
        return await self._auth_call(
            "UserChangePassword",
            pb.AuthUserChangePasswordRequest(name=name, password=password),
            pb.AuthUserChangePasswordResponse,
        )

    async def user_get(self, name: str) -> pb.AuthUserGetResponse:
        return await self._auth_read(
            "UserGet", pb.AuthUserGetRequest(name=name), pb.AuthUserGetResponse
        )

    async def user_list(self) -> pb.AuthUserListResponse:
        return await self._auth_read("UserList", pb.AuthUserListRequest(), pb.AuthUserListResponse)

    async def user_grant_role(self, user: str, role: str) -> pb.AuthUserGrantRoleResponse:
        return await self._auth_call(
            "UserGrantRole",
            pb.AuthUserGrantRoleRequest(user=user, role=role),
            pb.AuthUserGrantRoleResponse,
        )

    async def user_revoke_role(self, user: str, role: str) -> pb.AuthUserRevokeRoleResponse:
        return await self._auth_call(
            "UserRevokeRole",
            pb.AuthUserRevokeRoleRequest(name=user, role=role),
            pb.AuthUserRevokeRoleResponse,
        )

    async def role_add(self, name: str) -> pb.AuthRoleAddResponse:
        return await self._auth_call(
            "RoleAdd", pb.AuthRoleAddRequest(name=name), pb.AuthRoleAddResponse
        )

    async def role_delete(self, name: str) -> pb.AuthRoleDeleteResponse:
        return await self._auth_call(
            "RoleDelete", pb.AuthRoleDeleteRequest(role=name), pb.AuthRoleDeleteResponse
        )

    async def role_get(self, name: str) -> pb.AuthRoleGetResponse:
        return await self._auth_read(
            "RoleGet", pb.AuthRoleGetRequest(role=name), pb.AuthRoleGetResponse
        )

    async def role_list(self) -> pb.AuthRoleListResponse:
        return await self._auth_read("RoleList", pb.AuthRoleListRequest(), pb.AuthRoleListResponse)

    async def role_grant_permission(
        self,
        role: str,
        permission: str,
        key: Key,
        range_end: Key | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
    ) -> pb.AuthRoleGrantPermissionResponse:
        """Grant ``permission`` (read, write, readwrite) on a key, a range or a prefix."""
        perm = auth_pb2.Permission(
            permType=PERMISSIONS[permission],
            key=to_bytes(key),
            range_end=resolve_range_end(key, range_end, prefix, from_key),
        )
        return await self._auth_call(
            "RoleGrantPermission",
            pb.AuthRoleGrantPermissionRequest(name=role, perm=perm),
            pb.AuthRoleGrantPermissionResponse,
        )

    async def role_revoke_permission(
        self, role: str, key: Key, range_end: Key | None = None, *, prefix: bool = False
    ) -> pb.AuthRoleRevokePermissionResponse:
        request = pb.AuthRoleRevokePermissionRequest(
            role=role, key=to_bytes(key), range_end=resolve_range_end(key, range_end, prefix, False)
        )
        return await self._auth_call(
            "RoleRevokePermission", request, pb.AuthRoleRevokePermissionResponse
        )
