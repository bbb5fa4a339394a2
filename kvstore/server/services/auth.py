"""etcd's Auth service: enable/disable, login, users and roles.

Every call goes through Raft as in etcd (reads too, so answers are
linearizable); the auth store applies them on every member. Passwords are
hashed here, on the member that takes the request and off the event loop,
so only bcrypt hashes reach the log; a login checks the password here too
and proposes just the user and a token prefix.
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2
from kvstore.auth.passwords import hash_password, password_matches
from kvstore.errors import AuthFailedError
from kvstore.rpc import CallContext, Method
from kvstore.server.services.core import Core

log = logging.getLogger(__name__)

SERVICE = "/etcdserverpb.Auth/"
MAX_LOGIN_ROUNDS = 5
"""A login retries when the auth store changed while the password was checked; bounded."""


class AuthService:
    def __init__(self, core: Core) -> None:
        self.core = core

    def _propose(self, request: Message, ctx: CallContext) -> Any:
        self.core.check_size(request)
        return self.core.node.submit(request)

    async def authenticate(
        self, req: rpc_pb2.AuthenticateRequest, ctx: CallContext
    ) -> rpc_pb2.AuthenticateResponse:
        node = self.core.node
        auth = node.auth
        await node.read_index()
        for _ in range(MAX_LOGIN_ROUNDS):
            hashed, revision = auth.password_of(req.name)
            if not await password_matches(req.password, hashed):
                log.info("failed login of user %r from %s", req.name, ctx.peer)
                raise AuthFailedError()
            login = peer_pb2.AuthenticateInternal(
                name=req.name, simple_token=auth.tokens.new_prefix()
            )
            response: rpc_pb2.AuthenticateResponse = await node.submit(login)
            if revision == auth.revision:
                return response
            # The user changed while we checked its password: check again (as etcd).
        raise AuthFailedError()

    async def user_add(self, req: rpc_pb2.AuthUserAddRequest, ctx: CallContext) -> Any:
        if not req.options.no_password:
            req.hashedPassword = await hash_password(req.password, self.core.cfg.bcrypt_cost)
        req.password = ""
        return await self._propose(req, ctx)

    async def user_change_password(
        self, req: rpc_pb2.AuthUserChangePasswordRequest, ctx: CallContext
    ) -> Any:
        if req.password:
            req.hashedPassword = await hash_password(req.password, self.core.cfg.bcrypt_cost)
            req.password = ""
        return await self._propose(req, ctx)

    def methods(self) -> list[tuple[str, Method]]:
        proposed = [
            ("AuthEnable", rpc_pb2.AuthEnableRequest),
            ("AuthDisable", rpc_pb2.AuthDisableRequest),
            ("AuthStatus", rpc_pb2.AuthStatusRequest),
            ("UserGet", rpc_pb2.AuthUserGetRequest),
            ("UserList", rpc_pb2.AuthUserListRequest),
            ("UserDelete", rpc_pb2.AuthUserDeleteRequest),
            ("UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest),
            ("UserRevokeRole", rpc_pb2.AuthUserRevokeRoleRequest),
            ("RoleAdd", rpc_pb2.AuthRoleAddRequest),
            ("RoleGet", rpc_pb2.AuthRoleGetRequest),
            ("RoleList", rpc_pb2.AuthRoleListRequest),
            ("RoleDelete", rpc_pb2.AuthRoleDeleteRequest),
            ("RoleGrantPermission", rpc_pb2.AuthRoleGrantPermissionRequest),
            ("RoleRevokePermission", rpc_pb2.AuthRoleRevokePermissionRequest),
        ]
        table = [(SERVICE + name, Method(request, self._propose)) for name, request in proposed]
        table += [
            (SERVICE + "Authenticate", Method(rpc_pb2.AuthenticateRequest, self.authenticate)),
            (SERVICE + "UserAdd", Method(rpc_pb2.AuthUserAddRequest, self.user_add)),
            (
                SERVICE + "UserChangePassword",
                Method(rpc_pb2.AuthUserChangePasswordRequest, self.user_change_password),
            ),
        ]
        return table
