"""An HTTP/1.1 client for the JSON gateway tests: whole answers, or a stream chunk by chunk."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

COMPARED_HEADERS = (
    "Content-Type",
    "Transfer-Encoding",
    "Allow",
    "X-Content-Type-Options",
    "Grpc-Metadata-Content-Type",
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
)
"""What a client can tell apart (Date, Server and Content-Length aside)."""


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    chunks: list[str]
    """The body: one string per HTTP chunk of a chunked answer, else the whole body."""

    @property
    def body(self) -> str:
        return "".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)


async def chunks_of(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body's HTTP chunks, each whole (aiohttp may hand one over in pieces)."""
    pending = b""
    async for data, end_of_chunk in response.content.iter_chunks():
        pending += data
        if end_of_chunk and pending:  # (aiohttp may report the last, empty chunk)
            yield pending
            pending = b""
    if pending:
        yield pending


async def call(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    max_chunks: int | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request; read the whole answer, or only ``max_chunks`` chunks of a stream."""
    async with session.request(method, url, data=body, headers=headers) as response:
        chunks: list[str] = []
        if response.headers.get("Transfer-Encoding") == "chunked":
            async for chunk in chunks_of(response):
                chunks.append(chunk.decode())
                if max_chunks is not None and len(chunks) >= max_chunks:
                    break
        else:
            chunks.append((await response.read()).decode())
        got = response.headers
        kept = {name: got[name] for name in COMPARED_HEADERS if name in got}
        return Answer(response.status, kept, chunks)


_MASKED_VALUE = r'"(?:[^"\\]|\\.)*"|-?\d+|true|false|\[[^\]]*\]'


def mask(text: str, fields: tuple[str, ...]) -> str:
    """Replace the values of ``fields`` (strings, numbers, flat lists) with ``"*"``."""
    for field in fields:
        text = re.sub(rf'"{re.escape(field)}":(?:{_MASKED_VALUE})', f'"{field}":"*"', text)
    return text
