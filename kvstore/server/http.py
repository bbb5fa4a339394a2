"""A member's HTTP side, on aiohttp: etcd's JSON gateway, /health, /version, /metrics.

As etcd does, the client port serves all of it next to gRPC (the
:mod:`kvstore.rpc.switch` hands HTTP/1.1 connections to :meth:`MemberHTTP.protocol`),
unless ``--listen-client-http-urls`` moves it there; each
``--listen-metrics-urls`` listener serves the same endpoints without the
gateway. Every response carries etcd's default CORS headers (``--cors=*``);
``OPTIONS`` answers 200 with them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from kvstore import rpc
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import PermissionDeniedError, UserEmptyError
from kvstore.gateway import Gateway
from kvstore.gateway.routes import PREFIXES
from kvstore.server.config import CLUSTER_VERSION, SERVER_VERSION
from kvstore.server.services import Core

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
}
SHUTDOWN_GRACE = 0.5
"""Seconds requests in flight get when the member stops (streams then end)."""
_RANGE = "/etcdserverpb.KV/Range"
_COMMON_NAME_REFUSED = (
    "CommonName of client sending a request against gateway will be ignored and not used as"
    " expected\n"
)
_ALARM_REASONS = {rpc_pb2.NOSPACE: "ALARM NOSPACE", rpc_pb2.CORRUPT: "ALARM CORRUPT"}

Endpoint = Callable[[web.BaseRequest], Awaitable[web.Response]]


class MemberHTTP:
    """The HTTP endpoints of one member and the listeners serving them."""

    def __init__(self, core: Core, clients: rpc.Server) -> None:
        self.core = core
        self.clients = clients
        self.gateway = Gateway(clients, headers=CORS_HEADERS)
        self.endpoints: dict[str, Endpoint] = {
            "/health": self._health,
            "/readyz": self._readyz,
            "/livez": self._livez,
            "/version": self._version,
            "/metrics": self._metrics,
        }
        self.serving_clients = False
        """Set once every client listener is bound (after this member is published): until
        then /health and /readyz say no, so whoever waits for them can connect at once."""
        self._client_server: web.Server | None = None
        self._servers: list[web.Server] = []
        self._listeners: list[asyncio.Server] = []

    def protocol(self) -> asyncio.Protocol:
        """A protocol for one HTTP/1.1 connection to the client port (gateway included)."""
        if self._client_server is None:
            self._client_server = self._server(self._serve_client)
            self._servers.append(self._client_server)
        return self._client_server()

    async def listen(
        self, host: str, port: int, context: ssl.SSLContext | None, *, gateway: bool
    ) -> None:
        """Serve HTTP alone on ``host:port``: a metrics URL, or (``gateway``) a client HTTP URL."""
        server = self._server(self._serve_client if gateway else self._serve_endpoints)
        self._servers.append(server)
        loop = asyncio.get_running_loop()
        self._listeners.append(
            await loop.create_server(server, host, port, ssl=context, reuse_address=True)
        )

    async def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        for server in self._servers:
            await server.shutdown(SHUTDOWN_GRACE)
        for listener in self._listeners:
            await listener.wait_closed()

    @staticmethod
    def _server(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]) -> web.Server:
        # handler_cancellation: a watch whose client went away must stop, not wait for events.
        return web.Server(handler, handler_cancellation=True, access_log=None)

    # ----- dispatch

    async def _serve_client(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._names_a_user(request):
            # Go's http.Error, before etcd adds its CORS headers.
            headers = {"Content-Type": _TEXT, "X-Content-Type-Options": "nosniff"}
            return web.Response(status=400, text=_COMMON_NAME_REFUSED, headers=headers)
        if request.method == "OPTIONS":
            return web.Response(headers=CORS_HEADERS)
        response = await self.gateway.serve(request)
        if response is not None:
            return response
        return await self._serve_endpoints(request)

    def _names_a_user(self, request: web.BaseRequest) -> bool:
        """A gateway request whose client certificate has a Common Name, with auth on.

        The gateway never takes the certificate as the caller (only a token), so etcd
        refuses such a request rather than serve it as someone else; so do we.
        """
        if not (self.core.cfg.client_tls.client_cert_auth and self.core.node.auth.enabled):
            return False
        if not request.path.startswith(PREFIXES) or request.transport is None:
            return False
        return bool(rpc.peer_common_name(request.transport))

    async def _serve_endpoints(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(headers=CORS_HEADERS)
        endpoint = self.endpoints.get(request.path)
        if endpoint is None:
            return _text(404, "404 page not found\n")
        return await endpoint(request)

    # ----- endpoints

    async def _health(self, request: web.BaseRequest) -> web.Response:
        """etcd's /health: no alarm (but those in ``?exclude=``), a leader, a linearizable read."""
        if request.method != "GET":
            return _method_not_allowed()
        healthy, reason = await self._check_health(set(request.query.getall("exclude", [])))
        health = {"health": "true" if healthy else "false", "reason": reason}
        body = json.dumps(health, separators=(",", ":"))
        if healthy:
            return web.Response(text=body, headers={**CORS_HEADERS, "Content-Type": _TEXT})
        return _text(503, body + "\n")

    async def _check_health(self, excluded_alarms: set[str]) -> tuple[bool, str]:
        core = self.core
        node = core.node
        for alarm in node.store.alarm_members():
            if rpc_pb2.AlarmType.Name(alarm.alarm) not in excluded_alarms:
                return False, _ALARM_REASONS.get(alarm.alarm, "ALARM UNKNOWN")
        if not node.leader_id or not self.serving_clients:
            return False, "RAFT NO LEADER"
        request = rpc_pb2.RangeRequest(key=b"health", keys_only=True, limit=1)
        ctx = rpc.CallContext(_RANGE, {}, "health check", None)
        try:
            async with asyncio.timeout(core.cfg.request_timeout):
                await self.clients.methods[_RANGE].handler(request, ctx)
        except TimeoutError:
            return False, "RANGE ERROR:context deadline exceeded"
        except (UserEmptyError, PermissionDeniedError):
            pass  # auth is enabled: the read was refused, so the member answers (as etcd)
        except Exception as error:
            _, message = self.clients.error_mapper(error)
            return False, f"RANGE ERROR:{message}"
        return True, ""

    async def _readyz(self, request: web.BaseRequest) -> web.Response:
        if request.method != "GET":
            return _method_not_allowed()
        if self.core.node.leader_id and self.serving_clients:
            return _text(200, "ok\n")
        return _text(503, "not ready: no leader\n")

    async def _livez(self, request: web.BaseRequest) -> web.Response:
        if request.method != "GET":
            return _method_not_allowed()
        return _text(200, "ok\n")

    async def _version(self, request: web.BaseRequest) -> web.Response:
        if request.method != "GET":
            return _method_not_allowed()
        body = f'{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}'
        return web.Response(body=body.encode(), headers={**CORS_HEADERS, "Content-Type": _JSON})

    async def _metrics(self, request: web.BaseRequest) -> web.Response:
        text = self.core.node.metrics.render()
        return web.Response(
            text=text, headers={**CORS_HEADERS, "Content-Type": "text/plain; version=0.0.4"}
        )


_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


def _text(status: int, text: str) -> web.Response:
    """Like Go's http.Error."""
    headers = {**CORS_HEADERS, "Content-Type": _TEXT, "X-Content-Type-Options": "nosniff"}
    return web.Response(status=status, text=text, headers=headers)


def _method_not_allowed() -> web.Response:
    response = _text(405, "Method Not Allowed\n")
    response.headers["Allow"] = "GET"
    return response
