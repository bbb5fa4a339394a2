"""The gateway's calls in one process: a gRPC server's methods behind one port, HTTP and gRPC.

The methods here are small handlers of this test (the real services need a
member); what is under test is the plumbing every route shares: the port
switch, metadata and deadlines, error mapping, and streams ending when the
client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from aiohttp import web

from kvstore import rpc
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.mvccpb import kv_pb2
from kvstore.errors import LeaseNotFoundError, NoLeaderError
from kvstore.gateway import Gateway
from kvstore.ports import free_ports
from kvstore.server.status import to_status
from tests.compat.gateway_http import call, chunks_of

RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"
WATCH = "/etcdserverpb.Watch/Watch"
KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
SNAPSHOT = "/etcdserverpb.Maintenance/Snapshot"


class Handlers:
    def __init__(self) -> None:
        self.watch_closed = asyncio.Event()

    async def range(self, request: rpc_pb2.RangeRequest, ctx: rpc.CallContext) -> object:
        """Echo the call's metadata back as key-values (and sleep if asked to)."""
        if request.key == b"sleep":
            await asyncio.sleep(30)
        kvs = [
            kv_pb2.KeyValue(key=name.encode(), value=value.encode())
            for name, value in sorted(ctx.metadata.items())
        ]
        if ctx.deadline is not None:
            kvs.append(kv_pb2.KeyValue(key=b"deadline"))
        return rpc_pb2.RangeResponse(kvs=kvs, count=len(kvs))

    async def put(self, request: rpc_pb2.PutRequest, ctx: rpc.CallContext) -> object:
        raise LeaseNotFoundError()

    async def watch(
        self, requests: AsyncIterator[rpc_pb2.WatchRequest], ctx: rpc.CallContext
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        try:
            async for request in requests:
                if request.create_request.key == b"fail":
                    raise NoLeaderError()
                yield rpc_pb2.WatchResponse(
                    created=True, watch_id=request.create_request.start_revision
                )
            await asyncio.Event().wait()  # as etcd's: open after the requests end
        finally:
            self.watch_closed.set()

    async def snapshot(
        self, request: rpc_pb2.SnapshotRequest, ctx: rpc.CallContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        yield rpc_pb2.SnapshotResponse(blob=b"x" * 20_000, remaining_bytes=1)
        raise NoLeaderError()


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Handlers]]:
    """One port serving the handlers over gRPC and, through the gateway, over HTTP/1.1."""
    handlers = Handlers()
    server = rpc.Server(
        {
            RANGE: rpc.Method(rpc_pb2.RangeRequest, handlers.range),
            PUT: rpc.Method(rpc_pb2.PutRequest, handlers.put),
            WATCH: rpc.Method(rpc_pb2.WatchRequest, handlers.watch, rpc.Cardinality.BIDI_STREAM),
            SNAPSHOT: rpc.Method(
                rpc_pb2.SnapshotRequest, handlers.snapshot, rpc.Cardinality.SERVER_STREAM
            ),
        },
        max_receive_bytes=1024,
        error_mapper=to_status,
    )
    gateway = Gateway(server)

    async def serve(request: web.BaseRequest) -> web.StreamResponse:
        return await gateway.serve(request) or web.Response(status=404, text="not ours")

    http = web.Server(serve, handler_cancellation=True, access_log=None)
    (port,) = free_ports(1)
    await server.listen("127.0.0.1", port, http1=http)
    try:
        yield f"127.0.0.1:{port}", handlers
    finally:
        await server.stop()
        await http.shutdown(1)


def _metadata(body: str) -> dict[str, str]:
    """What the range handler echoed: the call's metadata."""
    kvs = json.loads(body).get("kvs", [])
    return {_text(kv["key"]): _text(kv.get("value", "")) for kv in kvs}


def _text(encoded: str) -> str:
    return base64.b64decode(encoded).decode()


async def test_one_port_serves_grpc_and_the_gateway_the_same_method(
    served: tuple[str, Handlers],
) -> None:
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        got = await channel.unary_unary(
            RANGE,
            request_serializer=rpc_pb2.RangeRequest.SerializeToString,
            response_deserializer=rpc_pb2.RangeResponse.FromString,
        )(rpc_pb2.RangeRequest(key=b"k"), metadata=[("token", "t1")], timeout=10)
    assert {kv.key: kv.value for kv in got.kvs}[b"token"] == b"t1"
    async with aiohttp.ClientSession() as session:
        answer = await call(
            session,
            f"http://{address}/v3/kv/range",
            b'{"key":"aw=="}',
            headers={
                "Authorization": "tok",
                "Grpc-Metadata-Hasleader": "true",
                "X-Forwarded-For": "10.0.0.1",
            },
        )
    assert answer.status == 200, answer
    seen = _metadata(answer.body)
    assert seen["authorization"] == seen["token"] == "tok"
    assert seen["hasleader"] == "true"
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["x-forwarded-host"] == address
    assert "deadline" not in seen


async def test_errors_deadlines_and_limits(served: tuple[str, Handlers]) -> None:
    address, _ = served
    base = f"http://{address}/v3"
    async with aiohttp.ClientSession() as session:
        missing = await call(session, f"{base}/kv/put", b'{"key":"aw==","lease":5}')
        assert (missing.status, missing.json()) == (
            404,
            {"error": LeaseNotFoundError.message, "code": 5, "message": LeaseNotFoundError.message},
        )
        late = await call(
            session, f"{base}/kv/range", b'{"key":"c2xlZXA="}', headers={"Grpc-Timeout": "200m"}
        )
        assert (late.status, late.json()["code"]) == (504, 4)
        assert late.json()["message"] == "context deadline exceeded"
        bad_timeout = await call(session, f"{base}/kv/range", b"{}", headers={"Grpc-Timeout": "x"})
        assert (bad_timeout.status, bad_timeout.json()["message"]) == (
            400,
            "invalid grpc-timeout: x",
        )
        # Larger than the gRPC server takes (1024 bytes here): refused in gRPC's words.
        big = await call(session, f"{base}/kv/range", json.dumps({"key": "eHh4" * 400}).encode())
        assert (big.status, big.json()["message"]) == (
            429,
            "grpc: received message larger than max (1203 vs. 1024)",
        )
        unserved = await call(session, f"{base}/lease/grant", b'{"TTL":5}')
        assert (unserved.status, unserved.json()["code"]) == (501, 12)
        assert unserved.json()["message"] == "unknown service etcdserverpb.Lease"


async def test_a_stream_fails_with_an_error_chunk_after_its_messages(
    served: tuple[str, Handlers],
) -> None:
    address, _ = served
    async with aiohttp.ClientSession() as session:
        snapshot = await call(session, f"http://{address}/v3/maintenance/snapshot", b"{}")
        assert snapshot.status == 200
        first, last = snapshot.chunks
        assert first.endswith("}}\n") and len(first) > 20_000  # one message, one chunk
        assert json.loads(last) == {
            "error": {
                "grpc_code": 14,
                "http_code": 503,
                "message": "etcdserver: no leader",
                "http_status": "Service Unavailable",
            }
        }
        failed = await call(
            session, f"http://{address}/v3/watch", b'{"create_request":{"key":"ZmFpbA=="}}'
        )
        assert failed.status == 503  # failed before its first message: the status says it
        assert json.loads(failed.body)["error"]["grpc_code"] == 14


async def test_a_watch_stays_open_and_ends_when_the_client_goes(
    served: tuple[str, Handlers],
) -> None:
    address, handlers = served
    body = b'{"create_request":{"key":"YQ==","start_revision":1}} {"create_request":{"key":"Yg=="}}'
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{address}/v3/watch", data=body) as response,
    ):
        assert response.headers["Transfer-Encoding"] == "chunked"
        chunks = chunks_of(response)
        first = json.loads(await anext(chunks))
        second = json.loads(await anext(chunks))
        assert [first, second] == [
            {"result": {"watch_id": "1", "created": True}},
            {"result": {"created": True}},
        ]
        # The body has ended; the stream has not.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(chunks)
        assert not handlers.watch_closed.is_set()
    async with asyncio.timeout(10):
        await handlers.watch_closed.wait()


async def test_a_stream_ends_at_its_deadline(served: tuple[str, Handlers]) -> None:
    address, handlers = served
    async with aiohttp.ClientSession() as session:
        watch = await call(
            session,
            f"http://{address}/v3/watch",
            b'{"create_request":{"key":"YQ=="}}',
            headers={"Grpc-Timeout": "300m"},
        )
    assert watch.status == 200
    created, expired = watch.chunks
    assert json.loads(created) == {"result": {"created": True}}
    assert json.loads(expired) == {
        "error": {
            "grpc_code": 4,
            "http_code": 504,
            "message": "context deadline exceeded",
            "http_status": "Gateway Timeout",
        }
    }
    async with asyncio.timeout(10):
        await handlers.watch_closed.wait()
