"""Minimal HTTP/1.1 endpoints of a member: /health, /readyz, /livez, /version, /metrics.

etcd multiplexes these onto its client port; we serve them on a separate
listener (``--listen-metrics-urls``, like etcd's flag of the same name).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, str, str]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve_http(
    host: str, port: int, routes: dict[str, Handler], context: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Start serving ``routes`` (path -> handler returning (status, content type, body)).

    With ``context``, the listener speaks HTTPS.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                parts = line.decode("latin-1").split()
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                if len(parts) < 2:
                    return
                method, target = parts[0], parts[1]
                path = target.split("?", 1)[0]
                handler = routes.get(path)
                if method not in ("GET", "HEAD"):
                    status, ctype, body = 405, "text/plain", "method not allowed\n"
                elif handler is None:
                    status, ctype, body = 404, "text/plain", "404 page not found\n"
                else:
                    status, ctype, body = handler()
                data = body.encode()
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
                )
                writer.write(head.encode() + (b"" if method == "HEAD" else data))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, reuse_address=True, ssl=context)


def json_body(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))
