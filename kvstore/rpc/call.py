"""What a gRPC handler is and what it knows of its call."""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from google.protobuf.message import Message

from kvstore.rpc.status import StatusCode

log = logging.getLogger(__name__)


class PreEncoded(Protocol):
    """A streamed response already (partly) encoded: the connection sends its bytes;
    a consumer that needs the message (the JSON gateway) asks for it."""

    def SerializeToString(self) -> bytes: ...

    def to_message(self) -> Message: ...


class Cardinality(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server-stream"
    BIDI_STREAM = "bidi-stream"


@dataclasses.dataclass(frozen=True)
class Method:
    """One RPC: the request type to decode and the handler to call.

    A unary handler ``(request, context)`` returns the response, a future of
    it, or a coroutine (the first two need no task). A server-streaming handler
    ``(request, context)`` and a bidirectional one ``(requests, context)`` are
    async generators of responses.
    """

    request_type: type[Message]
    handler: Callable[..., Any]
    cardinality: Cardinality = Cardinality.UNARY


@dataclasses.dataclass(slots=True)
class CallContext:
    """What a handler knows of its call besides the request."""

    method: str
    metadata: dict[str, str]
    """Request headers: lower-case names; binary (``-bin``) values stay base64 text.
    Read only: calls whose header blocks were the same share one dict."""
    peer: str
    deadline: float | None
    """Monotonic time by which the client gives up (None: no deadline)."""
    peer_common_name: str = ""
    """The Common Name of the client's verified TLS certificate ("" without one)."""

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


ErrorMapper = Callable[[BaseException], tuple[int, str]]
"""An exception a handler raised -> the (gRPC status code, message) the client gets."""


def default_error_mapper(exc: BaseException) -> tuple[int, str]:
    log.exception("unexpected error serving a call", exc_info=exc)
    return StatusCode.UNKNOWN, str(exc)


def methods_of(*tables: Iterable[tuple[str, Method]]) -> dict[str, Method]:
    """One path -> method table from several services' tables."""
    out: dict[str, Method] = {}
    for table in tables:
        for path, method in table:
            assert path not in out, f"{path} registered twice"
            out[path] = method
    return out
