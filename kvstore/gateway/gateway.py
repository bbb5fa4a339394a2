"""etcd's JSON gateway on aiohttp: each route calls the gRPC server's own method.

A route decodes its JSON body into the method's request (see
:mod:`kvstore.gateway.jsonpb`), calls the same :class:`kvstore.rpc.Method`
the gRPC server calls, and answers as grpc-gateway v1 does: the response as
JSON, or ``{"error", "code", "message"}`` with the HTTP status of the gRPC
code the server's error mapper gives. Streams use chunked encoding, one
``{"result": ...}`` object and a newline per chunk; a stream that fails ends
with an ``{"error": {...}}`` chunk.

What the gateway adds to a call's metadata, as grpc-gateway does: the
``Authorization`` header (as ``authorization``, and as ``token``, the key
etcd's clients use, so that auth reads one key), ``Grpc-Metadata-*`` headers
without their prefix (``Grpc-Metadata-Hasleader: true`` asks for a leader),
``x-forwarded-host`` and ``x-forwarded-for``; ``Grpc-Timeout`` sets the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.streams import StreamReader
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

# The gateway serves these services: their descriptors must be in the pool.
from kvstore._pb.etcdserverpb import rpc_pb2  # noqa: F401
from kvstore._pb.v3electionpb import v3election_pb2  # noqa: F401
from kvstore._pb.v3lockpb import v3lock_pb2  # noqa: F401
from kvstore.gateway import gojson, jsonpb
from kvstore.gateway.errors import error_body, http_status, stream_error_chunk
from kvstore.gateway.gojson import GoJSONError
from kvstore.gateway.routes import PREFIXES, ROUTES
from kvstore.rpc import CallContext, Cardinality, Method, PreEncoded, RpcError, StatusCode

if TYPE_CHECKING:
    from kvstore.rpc import Server

log = logging.getLogger(__name__)

BODY_BYTES_FACTOR = 4
"""A JSON body may be this many times the largest gRPC message (base64 alone takes 4/3):
larger ones are refused before they are parsed."""
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_JSON = "application/json"


class _Refused(Exception):
    """The request ends before its method is called, with a gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Gateway:
    """Serve etcd's gateway routes with the methods of the gRPC server ``rpc``."""

    def __init__(self, rpc: Server, headers: Mapping[str, str] | None = None) -> None:
        self.rpc = rpc
        self.headers = dict(headers or {})
        """Added to every response (e.g. CORS headers)."""
        self.max_body_bytes = BODY_BYTES_FACTOR * rpc.max_receive_bytes
        self._request_types: dict[str, type[Message]] = {}

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """The response to ``request``, or None when its path is not the gateway's."""
        path = request.path
        if path == "/v3":
            # Go's ServeMux sends a subtree's root without its slash to the subtree.
            return web.Response(status=301, headers={**self.headers, "Location": "/v3/"})
        for prefix in PREFIXES:
            if path.startswith(prefix):
                break
        else:
            return None
        grpc_path = ROUTES.get(path[len(prefix) :])
        if grpc_path is None:
            return self._text(404, "Not Found\n")
        if request.method != "POST":
            return self._text(405, "Method Not Allowed\n")
        try:
            ctx = self._context(request, grpc_path)
            method = self.rpc.methods.get(grpc_path)
            if method is not None and method.cardinality is Cardinality.BIDI_STREAM:
                return await self._bidi_stream(request, method, ctx)
            message = self._request_type(grpc_path, method)()
            try:
                jsonpb.decode(await self._body(request), message)
            except GoJSONError as error:
                raise _Refused(StatusCode.INVALID_ARGUMENT, str(error)) from None
            if method is None:
                raise _Refused(StatusCode.UNIMPLEMENTED, self.rpc.unknown_method_message(grpc_path))
            self._check_size(message)
            if method.cardinality is Cardinality.SERVER_STREAM:
                return await self._stream(request, method.handler(message, ctx), ctx)
            response = await self._call_unary(method, message, ctx)
        except _Refused as refused:
            return self._error(refused.code, refused.message)
        return web.Response(
            body=jsonpb.encode(response).encode(), headers=self._headers(_JSON, success=True)
        )

    # ----- requests

    def _context(self, request: web.BaseRequest, grpc_path: str) -> CallContext:
        metadata: dict[str, str] = {}
        deadline = None
        for name, value in request.headers.items():
            key = name.lower()
            if key == "authorization":
                metadata["authorization"] = value
                metadata["token"] = value
            elif key.startswith("grpc-metadata-"):
                metadata[key[len("grpc-metadata-") :]] = value
            elif key == "grpc-timeout":
                deadline = time.monotonic() + _timeout_seconds(value)
        metadata["x-forwarded-host"] = request.headers.get("X-Forwarded-Host", request.host)
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        metadata["x-forwarded-for"] = f"{forwarded}, {peer}" if forwarded else peer
        return CallContext(grpc_path, metadata, peer, deadline)

    def _request_type(self, grpc_path: str, method: Method | None) -> type[Message]:
        if method is not None:
            return method.request_type
        known = self._request_types.get(grpc_path)
        if known is None:
            # A method this member does not serve (yet): its request is still decoded first,
            # so bad JSON gets the same answer as on etcd.
            service, _, name = grpc_path.lstrip("/").partition("/")
            found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
            known = message_factory.GetMessageClass(found.input_type)
            self._request_types[grpc_path] = known
        return known

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The whole body (grpc-gateway reads it all before decoding), within the limit."""
        limit = self.max_body_bytes
        size = request.content_length
        if size is not None and size > limit:
            raise self._too_large(size, limit)
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                raise self._too_large(len(body), limit)
        return bytes(body)

    def _check_size(self, message: Message) -> None:
        """What the gRPC server refuses, the gateway refuses, in its words."""
        size = message.ByteSize()
        if size > self.rpc.max_receive_bytes:
            raise self._too_large(size, self.rpc.max_receive_bytes)

    @staticmethod
    def _too_large(size: int, limit: int) -> _Refused:
        return _Refused(
            StatusCode.RESOURCE_EXHAUSTED,
            f"grpc: received message larger than max ({size} vs. {limit})",
        )

    # ----- calls

    def _status(self, error: BaseException) -> tuple[int, str]:
        if isinstance(error, RpcError):
            return int(error.code), error.message
        return self.rpc.error_mapper(error)

    async def _call_unary(self, method: Method, message: Message, ctx: CallContext) -> Message:
        try:
            result = method.handler(message, ctx)
            if isinstance(result, Message):
                return result
            if ctx.deadline is None:
                response: Message = await result
                return response
            try:
                async with asyncio.timeout_at(ctx.deadline):
                    response = await result
                    return response
            except TimeoutError:
                raise _Refused(StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded") from None
        except _Refused:
            raise
        except Exception as error:
            raise _Refused(*self._status(error)) from None

    async def _bidi_stream(
        self, request: web.BaseRequest, method: Method, ctx: CallContext
    ) -> web.StreamResponse:
        """Watch and LeaseKeepAlive: requests are the JSON objects of the body, one after another.

        As grpc-gateway does: a bad first request fails the call (UNKNOWN, 500); a
        bad later one ends the requests, as does the end of the body.
        """
        reader = _RequestReader(request.content, method.request_type, self.max_body_bytes)
        try:
            first = await reader.next()
        except GoJSONError as error:
            return self._error(StatusCode.UNKNOWN, str(error))

        async def requests() -> AsyncIterator[Message]:
            if first is None:
                return
            yield first
            while True:
                try:
                    message = await reader.next()
                except GoJSONError as error:
                    log.debug("gateway stream %s: %s; no more requests", ctx.method, error)
                    return
                if message is None:
                    return
                yield message

        return await self._stream(request, method.handler(requests(), ctx), ctx)

    async def _stream(
        self,
        request: web.BaseRequest,
        responses: AsyncIterator[Message | PreEncoded],
        ctx: CallContext,
    ) -> web.StreamResponse:
        """Forward responses one chunk each, as grpc-gateway's ForwardResponseStream does."""
        response: web.StreamResponse | None = None
        deadline = asyncio.timeout_at(ctx.deadline)
        try:
            async with deadline:
                async for reply in responses:
                    message = reply if isinstance(reply, Message) else reply.to_message()
                    if response is None:
                        response = await self._start_stream(request, 200, with_grpc_headers=True)
                    data = b'{"result":' + jsonpb.encode(message).encode() + b"}\n"
                    await response.write(data)
        except ConnectionError:
            log.debug("gateway stream: the client went away")
            return response or web.StreamResponse()
        except Exception as error:
            code: int
            if deadline.expired():
                code, text = StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"
            else:
                code, text = self._status(error)
            if response is None:
                response = await self._start_stream(request, http_status(code))
            await response.write(stream_error_chunk(code, text))
        finally:
            await _close(responses)
        if response is None:
            response = await self._start_stream(request, 200)
        await response.write_eof()
        return response

    async def _start_stream(
        self, request: web.BaseRequest, status: int, with_grpc_headers: bool = False
    ) -> web.StreamResponse:
        """Headers go out with the first chunk (with the gRPC call's, once it sent a message)."""
        headers = self._headers(_JSON, success=with_grpc_headers)
        response = web.StreamResponse(status=status, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    # ----- responses

    def _headers(self, content_type: str, success: bool = False) -> dict[str, str]:
        headers = {**self.headers, "Content-Type": content_type}
        if success:
            # What etcd's gateway passes on from its gRPC call's response headers.
            headers["Grpc-Metadata-Content-Type"] = "application/grpc"
        return headers

    def _error(self, code: int, message: str) -> web.Response:
        return web.Response(
            status=http_status(code), body=error_body(code, message), headers=self._headers(_JSON)
        )

    def _text(self, status: int, text: str) -> web.Response:
        """Go's http.Error: the gateway's routing errors are plain text."""
        headers = self._headers("text/plain; charset=utf-8")
        headers["X-Content-Type-Options"] = "nosniff"
        return web.Response(status=status, text=text, headers=headers)


class _RequestReader:
    """Successive JSON requests from a body that is still arriving (Go's json.Decoder)."""

    def __init__(self, content: StreamReader, request_type: type[Message], limit: int) -> None:
        self.content = content
        self.request_type = request_type
        self.limit = limit
        self.buffer = bytearray()
        self.splitter = gojson.ValueSplitter()
        self.eof = False

    async def next(self) -> Message | None:
        """The next request; None when the body ended. Raises GoJSONError on bad input."""
        while True:
            end = self.splitter.end(self.buffer, self.eof)
            if end is not None:
                value = gojson.loads(bytes(self.buffer[:end]))
                del self.buffer[:end]
                self.splitter.reset()
                message = self.request_type()
                jsonpb.decode_value(value, message)
                return message
            if self.eof:
                return None
            if len(self.buffer) > self.limit:
                raise GoJSONError(f"a request of more than {self.limit} bytes")
            chunk = await self.content.readany()
            if chunk:
                self.buffer += chunk
            else:
                self.eof = True


def _timeout_seconds(value: str) -> float:
    """A ``Grpc-Timeout`` header (digits and a unit), as gRPC and grpc-gateway read it."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        raise _Refused(StatusCode.INVALID_ARGUMENT, f"invalid grpc-timeout: {value}")
    return int(digits) * unit


async def _close(responses: Any) -> None:
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        await aclose()
