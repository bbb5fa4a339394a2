"""How the gateway answers a gRPC status: grpc-gateway v1's HTTP codes and error bodies."""

from __future__ import annotations

import http

from kvstore.gateway.gojson import quote
from kvstore.rpc import StatusCode

HTTP_STATUS: dict[int, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 408,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    # Not 412: grpc-gateway maps it to 400 on purpose, and clients rely on that.
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}


def http_status(code: int) -> int:
    """The HTTP status grpc-gateway answers gRPC ``code`` with (unknown codes: 500)."""
    return HTTP_STATUS.get(code, 500)


def _object(fields: list[tuple[str, str | int]]) -> str:
    """A JSON object as jsonpb writes one: zero values left out."""
    parts = [
        f'"{name}":{quote(value) if isinstance(value, str) else value}'
        for name, value in fields
        if value
    ]
    return "{" + ",".join(parts) + "}"


def error_body(code: int, message: str) -> bytes:
    """A failed call's body: ``{"error": msg, "code": grpcCode, "message": msg}``."""
    return _object([("error", message), ("code", code), ("message", message)]).encode()


def stream_error_chunk(code: int, message: str) -> bytes:
    """The last chunk of a stream that failed (no newline after it, as grpc-gateway writes it)."""
    status = http_status(code)
    inner = _object(
        [
            ("grpc_code", code),
            ("http_code", status),
            ("message", message),
            ("http_status", http.HTTPStatus(status).phrase),
        ]
    )
    return ('{"error":' + inner + "}").encode()
