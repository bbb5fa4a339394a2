"""A fault-injecting TCP proxy mesh on the peer (Raft) links, in pure Python.

Each member advertises a proxy address as its peer URL and listens on a
private port behind it, so every peer connection to member ``j`` goes
through ``j``'s proxy. Members advertise one peer URL each, so the proxy
tells *who* is connecting from what the connection carries; a connection
always carries the traffic of one sender:

* etcd's peer transport (HTTP/1.1) sends ``X-Server-From: <member id>`` on
  every peer request;
* our peer transport opens every connection with a hello frame naming the
  sender (:func:`kvstore.server.peerwire.parse_hello`).

Bytes pass untouched until the sender is known; a connection whose sender
stays unknown is passed through.

Rules are per directed pair ``(src, dst)`` of member indices:

* ``blocked``: bytes from ``src`` to ``dst`` are not forwarded (they wait in
  the kernel buffers, so the sender stalls, as on a black-holed link); when
  the rule is lifted, connections that were frozen are reset, so what was in
  flight is lost rather than delivered late.
* ``delay``: every chunk from ``src`` to ``dst`` waits ``delay`` seconds.
* ``loss``: each chunk from ``src`` to ``dst`` resets its connection with
  probability ``loss`` (a byte stream cannot lose bytes; a reset loses the
  messages in flight, which the Raft transport then retransmits).

On a connection dialed by ``i`` to ``j``, bytes flowing towards ``j`` are
``i -> j`` and bytes flowing back are ``j -> i``. For etcd the stream
responses carry ``j``'s messages to ``i``; for our store every Raft message
of ``i`` travels on a connection ``i`` dialed, and what flows back is
protocol traffic (answers to pings, call results), so blocking ``j -> i``
alone also breaks ``i``'s connections to ``j`` once their pings go
unanswered, as on a real half-broken link.

The proxies run on their own event loop in a daemon thread, so a busy
harness loop does not slow the cluster's own traffic.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.server.peerwire import MAGIC, parse_hello

log = logging.getLogger(__name__)

# Bytes of a connection's start searched for its sender before giving up.
HEADER_LIMIT = 64 * 1024
_FROM = re.compile(rb"(?im)^x-server-from:\s*([0-9a-f]+)\s*$")


def etcd_sender(head: bytes) -> int | None:
    """The sending member's id from the first request of an etcd peer connection."""
    if b"\r\n\r\n" not in head:
        return None  # the request head is not complete yet
    m = _FROM.search(head)
    return int(m.group(1), 16) if m else None


def peer_sender(data: bytes) -> int | None:
    """The sender of a peer connection of etcd (HTTP/1.1) or of our store (its hello)."""
    if data.startswith(MAGIC[: len(data)]):
        parsed = parse_hello(data)
        return parsed[1] if parsed is not None else None
    return etcd_sender(data)


@dataclass
class LinkRule:
    """Faults on one directed link."""

    blocked: bool = False
    delay: float = 0.0
    loss: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.blocked and self.delay == 0.0 and self.loss == 0.0


@dataclass(eq=False)
class _Conn:
    sender: int | None  # the connecting member's id (resolved to an index per chunk)
    dst: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    frozen: bool = False
    frozen_directions: set[bool] = field(default_factory=set)
    # What the connecting member sent so far, while its identity is still unknown.
    head: bytes = b""
    identifying: bool = True
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        for w in self.writers:
            w.transport.abort()


class ProxyMesh:
    """Proxies in front of every member's peer listener, with per-pair rules.

    ``listen[j]`` is the address other members dial for member ``j``;
    ``target[j]`` is where member ``j`` really listens.
    """

    def __init__(
        self,
        listen: list[tuple[str, int]],
        target: list[tuple[str, int]],
        *,
        identify: Callable[[bytes], int | None] = peer_sender,
        seed: int = 0,
    ) -> None:
        self.listen = listen
        self.target = target
        self.identify = identify
        self.rules: dict[tuple[int, int], LinkRule] = {}
        self.member_index: dict[int, int] = {}  # member id -> index
        self._rng = random.Random(seed)
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None

    # ---- lifecycle (called from the harness thread) ----

    def start(self, timeout: float = 10.0) -> None:
        """Start the proxies in a daemon thread and wait until they listen."""
        self._ready.clear()
        self._servers = []
        self._thread = threading.Thread(target=self._main, name="chaos-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("peer proxies did not start")

    def stop(self) -> None:
        """Close every proxy and connection and join the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for j, (host, port) in enumerate(self.listen):
            server = await asyncio.start_server(
                functools.partial(self._handle, j=j), host, port, reuse_address=True
            )
            self._servers.append(server)
        self._ready.set()
        await self._stopping.wait()
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            conn.close()
        if self._handlers:  # closed connections end their handlers; let them finish
            await asyncio.wait(self._handlers, timeout=5)
        for server in self._servers:
            await server.wait_closed()

    # ---- rules (called from the harness thread) ----

    def set_member_ids(self, ids: dict[int, int]) -> None:
        """Map etcd member ids to member indices (learned from Status)."""
        self.member_index = dict(ids)

    def set_rule(self, src: int, dst: int, rule: LinkRule) -> None:
        self.rules[(src, dst)] = rule

    def heal(self) -> None:
        """Lift every rule; reset connections that were frozen."""
        self.rules = {}
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_frozen)

    def _reset_frozen(self) -> None:
        for conn in list(self._conns):
            if conn.frozen:
                conn.close()

    def partition(self, groups: list[list[int]]) -> None:
        """Block every link between members of different groups (both directions)."""
        for a_group in groups:
            for b_group in groups:
                if a_group is b_group:
                    continue
                for a in a_group:
                    for b in b_group:
                        self.set_rule(a, b, LinkRule(blocked=True))

    # ---- data path (proxy thread) ----

    def _rule(self, src: int | None, dst: int | None) -> LinkRule | None:
        if src is None or dst is None:
            return None
        return self.rules.get((src, dst))

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, j: int
    ) -> None:
        conn = _Conn(None, j, [writer])
        self._conns.add(conn)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            host, port = self.target[j]
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=5
            )
            conn.writers.append(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, conn, towards_target=True),
                self._pump(up_reader, writer, conn, towards_target=False),
            )
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(conn)
            self._handlers.discard(task)
            conn.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Conn,
        *,
        towards_target: bool,
    ) -> None:
        """Copy one direction; delays go through a queue so they do not cut throughput."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=256)

        async def deliver() -> None:
            loop = asyncio.get_running_loop()
            while (item := await queue.get()) is not None:
                at, data = item
                if at > loop.time():
                    await asyncio.sleep(at - loop.time())
                writer.write(data)
                await writer.drain()

        task = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if towards_target and conn.identifying:
                    self._identify(conn, data)
                at = self._admit(conn, towards_target)
                while at is None and not conn.closed:
                    await asyncio.sleep(0.05)  # frozen: stop reading, the sender stalls
                    at = self._admit(conn, towards_target)
                if at is None or at < 0:
                    break  # "lost": the connection is reset
                await queue.put((at, data))
            await queue.put(None)
            await task
        finally:
            task.cancel()
            conn.close()

    def _identify(self, conn: _Conn, data: bytes) -> None:
        conn.head += data
        conn.sender = self.identify(conn.head)
        if conn.sender is not None or len(conn.head) >= HEADER_LIMIT:
            conn.identifying, conn.head = False, b""

    def _admit(self, conn: _Conn, towards_target: bool) -> float | None:
        """When to deliver a chunk now read: None = blocked, < 0 = drop the connection."""
        peer = self.member_index.get(conn.sender) if conn.sender is not None else None
        src, dst = (peer, conn.dst) if towards_target else (conn.dst, peer)
        rule = self._rule(src, dst)
        now = asyncio.get_running_loop().time()
        if rule is not None and rule.blocked:
            conn.frozen = True
            conn.frozen_directions.add(towards_target)
            return None
        if towards_target in conn.frozen_directions:
            return -1.0  # a chunk held while blocked is never delivered late
        if rule is None:
            return now
        if rule.loss and self._rng.random() < rule.loss:
            return -1.0
        return now + rule.delay
