"""The aiohttp application: the page, its JSON API and its Server-Sent Event streams.

API (every error is a Kubernetes-style ``Status`` with ``code``, ``reason``
and ``message``; nothing is written when a request is refused):

=========================================  ===============================================
``GET  /api/events``                       SSE: ``store``, ``locks``, ``objects`` snapshots,
                                           then ``store``/``locks`` updates and ``object``
                                           changes as they happen
``GET  /api/store``                        members, leader, leader timeline, request rates
``GET  /api/locks``                        lease locks, node heartbeats
``GET  /api/objects/{resource}``           nodes, deployments, replicasets or pods
``POST /api/replicasets``                  create (name, namespace, replicas, image, cpu,
                                           memory)
``POST /api/{resource}/{ns}/{name}/scale`` deployments or replicasets:
                                           ``{"replicas": N, "resourceVersion": "R"}``
``DELETE /api/pods/{ns}/{name}``           ``{"resourceVersion": "R"}``
``POST /api/nodes/{name}/cordon``          ``{"resourceVersion": "R"}`` (and ``/uncordon``)
``GET  /api/keys?prefix=&limit=``          keys under a prefix (no values)
``GET  /api/key?key=&revision=``           one value, at the latest or a given revision
``GET  /api/key/history?key=&limit=``      the key's versions, newest first
``GET  /api/keys/tail?prefix=``            SSE: ``watching``, then a ``change`` per event
=========================================  ===============================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web
from aiohttp_sse import sse_response

from controllers.store import Store
from dashboard import keys
from dashboard.errors import ApiError, BadRequest, Unavailable
from dashboard.hub import Hub, TooManySubscribers
from dashboard.locks import LockMonitor
from dashboard.members import MemberMonitor
from dashboard.workloads import ObjectRef, Workloads
from kvstore.client import Client, EtcdError, InvalidRequestError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
# Key tails (one store watch each) open at once, and the changes one may have queued.
MAX_TAILS = 16
TAIL_BUFFER = 1000
# A browser that accepts nothing for this long is disconnected.
SEND_TIMEOUT = 10.0
RECONNECT_MS = 1000  # how soon EventSource reconnects after a stream ends

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Config:
    etcd_prefix: str = "/registry"
    interval: float = 1.0
    metrics_urls: dict[str, str] = field(default_factory=dict)
    metrics_ssl: ssl.SSLContext | None = None


class Dashboard:
    """Everything behind the page: the monitors that keep state and the hub that pushes it."""

    def __init__(self, client: Client, config: Config) -> None:
        self.client = client
        self.config = config
        self.hub = Hub()
        self.members = MemberMonitor(
            client,
            self.hub,
            interval=config.interval,
            metrics_urls=config.metrics_urls,
            ssl_context=config.metrics_ssl,
        )
        self.locks = LockMonitor(client, self.hub)
        self.workloads = Workloads(Store(client, config.etcd_prefix), self.hub)
        self.tails = 0

    async def run(self) -> None:
        """Keep every monitor running until cancelled."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.members.run)
            tasks.start_soon(self.locks.run)
            tasks.start_soon(self.workloads.run)


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


@web.middleware
async def errors_as_status(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every API error as a JSON Status; the store's errors as 503 (or 400 if it said so)."""
    try:
        return await handler(request)
    except ApiError as error:
        body = status_body(error.code, error.reason, error.message, **error.details)
        return _json(body, error.code)
    except InvalidRequestError as error:
        return _json(status_body(400, "BadRequest", f"the store refused: {error}"), 400)
    except EtcdError as error:
        message = f"the store did not answer: {error}"
        return _json(status_body(503, "ServiceUnavailable", message), 503)
    except web.HTTPException as error:
        if not request.path.startswith("/api/") or error.status < 400:
            raise
        return _json(
            status_body(error.status, error.reason, error.text or error.reason), error.status
        )


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # past MAX_BODY: 413, as a Status
    if not raw:
        raise BadRequest("a JSON object is required as the request body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the request body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def build_app(dashboard: Dashboard) -> web.Application:
    app = web.Application(middlewares=[errors_as_status], client_max_size=MAX_BODY)
    hub = dashboard.hub
    client = dashboard.client
    workloads = dashboard.workloads

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def store_view(request: web.Request) -> web.Response:
        return _json(dashboard.members.view())

    async def locks_view(request: web.Request) -> web.Response:
        return _json(dashboard.locks.view())

    async def objects(request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        return _json({"resource": resource, "items": workloads.list(resource)})

    async def create_replicaset(request: web.Request) -> web.Response:
        return _json(await workloads.create_replicaset(await _body(request)), 201)

    async def scale(request: web.Request) -> web.Response:
        info = request.match_info
        ref = ObjectRef(info["resource"], info["name"], info["namespace"])
        return _json(await workloads.scale(ref, await _body(request)))

    async def delete_pod(request: web.Request) -> web.Response:
        info = request.match_info
        ref = ObjectRef("pods", info["name"], info["namespace"])
        revision = await workloads.delete(ref, await _body(request))
        message = f"pod {ref.namespace}/{ref.name} deleted"
        return _json(status_body(200, "", message, revision=revision))

    async def cordon(request: web.Request) -> web.Response:
        body = await _body(request)
        name = request.match_info["name"]
        unschedulable = request.match_info["action"] == "cordon"
        return _json(await workloads.set_unschedulable(name, body, unschedulable))

    async def list_keys(request: web.Request) -> web.Response:
        query = request.query
        limit = keys.parse_limit(query.get("limit"), keys.DEFAULT_LIMIT, keys.MAX_LIMIT)
        return _json(await keys.list_keys(client, query.get("prefix", ""), limit))

    async def get_key(request: web.Request) -> web.Response:
        query = request.query
        revision = keys.parse_revision(query.get("revision"))
        return _json(await keys.get_key(client, query.get("key", ""), revision))

    async def key_history(request: web.Request) -> web.Response:
        query = request.query
        limit = keys.parse_limit(query.get("limit"), 20, keys.HISTORY_LIMIT)
        return _json(await keys.key_history(client, query.get("key", ""), limit))

    async def events(request: web.Request) -> web.StreamResponse:
        try:
            subscription = hub.open()
        except TooManySubscribers as error:
            raise Unavailable(str(error)) from None
        with subscription:
            async with sse_response(request, send_timeout=SEND_TIMEOUT) as sse:
                await sse.send("{}", event="hello", retry=RECONNECT_MS)
                with contextlib.suppress(ConnectionError, TimeoutError):
                    async for update in subscription.updates:
                        await sse.send(json.dumps(update.data, default=str), event=update.event)
            return sse

    async def tail(request: web.Request) -> web.StreamResponse:
        prefix = request.query.get("prefix", "")
        if dashboard.tails >= MAX_TAILS:
            raise Unavailable(f"{MAX_TAILS} key tails are open already")
        dashboard.tails += 1
        try:
            async with sse_response(request, send_timeout=SEND_TIMEOUT) as sse:
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await _tail(client, prefix, sse)
            return sse
        finally:
            dashboard.tails -= 1

    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/store", store_view)
    app.router.add_get("/api/locks", locks_view)
    app.router.add_get("/api/objects/{resource}", objects)
    app.router.add_post("/api/replicasets", create_replicaset)
    app.router.add_post("/api/{resource}/{namespace}/{name}/scale", scale)
    app.router.add_delete("/api/pods/{namespace}/{name}", delete_pod)
    app.router.add_post("/api/nodes/{name}/{action:cordon|uncordon}", cordon)
    app.router.add_get("/api/keys", list_keys)
    app.router.add_get("/api/key", get_key)
    app.router.add_get("/api/key/history", key_history)
    app.router.add_get("/api/keys/tail", tail)
    app.on_shutdown.append(lambda app: _close(hub))
    return app


async def _close(hub: Hub) -> None:
    hub.close()


async def _tail(client: Client, prefix: str, sse: Any) -> None:
    """Send each change under ``prefix`` (all keys if empty) until the browser leaves.

    The watch is drained into a bounded buffer by its own task, so a slow
    browser never holds up the client's shared watch stream: when the buffer
    is full the tail ends with an ``overflow`` event instead.
    """
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](TAIL_BUFFER)
    # The empty prefix: every key (etcd's "from the first key on").
    watch = client.watch(prefix, prefix=True) if prefix else client.watch(b"\0", from_key=True)
    overflowed = False
    async with anyio.create_task_group() as tasks, watch as changes:

        async def pump() -> None:
            nonlocal overflowed
            with send:
                try:
                    async for batch in changes:
                        for event in batch.events:
                            send.send_nowait(keys.event_view(event))
                except anyio.WouldBlock:
                    log.info("key tail of %r: the browser fell behind; ending it", prefix)
                    overflowed = True
                except EtcdError as error:
                    with contextlib.suppress(anyio.WouldBlock):
                        send.send_nowait({"error": str(error)})

        tasks.start_soon(pump)
        await sse.send(json.dumps({"prefix": prefix}), event="watching", retry=RECONNECT_MS)
        with receive:
            async for item in receive:
                await sse.send(json.dumps(item), event="error" if "error" in item else "change")
        if overflowed:
            await sse.send(json.dumps({"prefix": prefix}), event="overflow")
        tasks.cancel_scope.cancel()
