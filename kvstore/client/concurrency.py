"""etcd's election and mutex recipes (clientv3/concurrency semantics) as a client library.

A :class:`Session` is a lease kept alive in the background. Contenders put a
key ``<prefix>/<lease id in hex>`` attached to their session's lease; the
key with the lowest create_revision under the prefix is the leader (or the
lock owner). A contender waits for every key created before its own to be
deleted, then re-checks that its own key still exists: its session may have
expired while it waited.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

import anyio

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import txn
from kvstore.client.client import Client
from kvstore.client.errors import LeaseNotFoundError
from kvstore.client.lease import LeaseKeepAlive
from kvstore.client.txn import Key, to_bytes


class ConcurrencyError(Exception):
    """Base of the recipes' own failures (etcd's concurrency package errors)."""


class ElectionNotLeaderError(ConcurrencyError):
    """The caller is not (or no longer) the leader of the election."""


class ElectionNoLeaderError(ConcurrencyError):
    """Nobody is campaigning."""


class SessionExpiredError(ConcurrencyError):
    """The session's lease expired while waiting; the campaign or lock was lost."""


class Session:
    """A lease of ``ttl`` seconds, kept alive while the context is open, revoked on exit."""

    def __init__(self, client: Client, ttl: int = 60) -> None:
        self.client = client
        self.ttl = ttl
        self.lease_id = 0
        self._keepalive: LeaseKeepAlive | None = None

    @classmethod
    def of_lease(cls, client: Client, lease_id: int) -> Session:
        """A session over a lease someone else keeps alive (not entered, never revoked here)."""
        session = cls(client)
        session.lease_id = lease_id
        return session

    @property
    def expired(self) -> anyio.Event:
        """Set once the lease is gone (revoked, expired, or not renewable in time)."""
        assert self._keepalive is not None, "the session is not open"
        return self._keepalive.lost

    async def __aenter__(self) -> Session:
        self.lease_id = (await self.client.grant(self.ttl)).ID
        self._keepalive = self.client.keepalive(self.lease_id)
        await self._keepalive.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._keepalive is not None
        await self._keepalive.__aexit__(exc_type, exc, tb)
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(5),
            contextlib.suppress(LeaseNotFoundError),  # already expired or revoked
        ):
            await self.client.revoke(self.lease_id)


def _owner_key(prefix: bytes, lease_id: int) -> bytes:
    return prefix + b"/" + format(lease_id, "x").encode()


async def _wait_deletes(client: Client, prefix: bytes, max_create_revision: int) -> None:
    """Wait until no key under ``prefix`` has create_revision <= max_create_revision."""
    while True:
        newest_older = await client.get(
            prefix + b"/",
            prefix=True,
            max_create_revision=max_create_revision,
            sort_target=pb.RangeRequest.CREATE,
            sort_order=pb.RangeRequest.DESCEND,
            limit=1,
        )
        if not newest_older.kvs:
            return
        blocker = newest_older.kvs[0].key
        async with client.watch(blocker, start_revision=newest_older.header.revision + 1) as w:
            async for batch in w:
                if any(e.type == kv_pb2.Event.DELETE for e in batch.events):
                    break


async def _first_created(client: Client, prefix: bytes) -> pb.RangeResponse:
    return await client.get(
        prefix + b"/",
        prefix=True,
        sort_target=pb.RangeRequest.CREATE,
        sort_order=pb.RangeRequest.ASCEND,
        limit=1,
    )


class Election:
    """etcd-style election on ``prefix``: campaign, proclaim, leader, observe, resign."""

    def __init__(self, session: Session, prefix: Key) -> None:
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(prefix).rstrip(b"/")
        self.key = b""
        self.revision = 0  # create_revision of our key while campaigning/leading

    @classmethod
    def resume(cls, session: Session, prefix: Key, key: bytes, revision: int) -> Election:
        """The election a leader key (from an earlier campaign) stands for."""
        election = cls(session, prefix)
        election.key, election.revision = key, revision
        return election

    async def campaign(self, value: Key) -> None:
        """Block until elected. Re-campaigning with the same session keeps its place."""
        key = _owner_key(self.prefix, self.session.lease_id)
        response = await (
            self.client.txn()
            .when(txn.create_revision(key) == 0)
            .then(txn.put(key, value, lease=self.session.lease_id))
            .otherwise(txn.get(key))
            .commit()
        )
        self.key = key
        self.revision = response.header.revision
        if not response.succeeded:
            existing = response.responses[0].response_range.kvs[0]
            self.revision = existing.create_revision
            if existing.value != to_bytes(value):
                await self.proclaim(value)
        try:
            await _wait_deletes(self.client, self.prefix, self.revision - 1)
            mine = await self.client.get(key)
            if not mine.kvs or mine.kvs[0].create_revision != self.revision:
                raise SessionExpiredError("the session expired while campaigning")
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.resign()
            raise

    async def proclaim(self, value: Key) -> None:
        """Change the leader's value without another election."""
        if not self.key:
            raise ElectionNotLeaderError("not campaigning")
        response = await (
            self.client.txn()
            .when(txn.create_revision(self.key) == self.revision)
            .then(txn.put(self.key, value, lease=self.session.lease_id))
            .commit()
        )
        if not response.succeeded:
            self.key = b""
            raise ElectionNotLeaderError("election: not leader")

    async def resign(self) -> None:
        """Give up leadership (or the place in the queue)."""
        if not self.key:
            return
        await (
            self.client.txn()
            .when(txn.create_revision(self.key) == self.revision)
            .then(txn.delete(self.key))
            .commit()
        )
        self.key = b""
        self.revision = 0

    async def leader(self) -> kv_pb2.KeyValue:
        """The current leader's key and value."""
        response = await _first_created(self.client, self.prefix)
        if not response.kvs:
            raise ElectionNoLeaderError("election: no leader")
        return response.kvs[0]

    async def observe(self) -> AsyncIterator[kv_pb2.KeyValue]:
        """Yield the leader's key-value each time the leader or its value changes."""
        last: tuple[bytes, int] | None = None
        while True:
            response = await _first_created(self.client, self.prefix)
            if response.kvs:
                kv = response.kvs[0]
                if (kv.key, kv.mod_revision) != last:
                    last = (kv.key, kv.mod_revision)
                    yield kv
                watch_key, start = kv.key, response.header.revision + 1
                async with self.client.watch(watch_key, start_revision=start) as w:
                    async for batch in w:
                        if batch.events:
                            break
            else:
                async with self.client.watch(
                    self.prefix + b"/", prefix=True, start_revision=response.header.revision + 1
                ) as w:
                    async for batch in w:
                        if batch.events:
                            break


class Mutex:
    """etcd-style distributed mutex on ``prefix``."""

    def __init__(self, session: Session, prefix: Key) -> None:
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(prefix).rstrip(b"/")
        self.key = b""
        self.revision = 0

    async def lock(self) -> None:
        """Block until this session owns the lock."""
        key = _owner_key(self.prefix, self.session.lease_id)
        response = await (
            self.client.txn()
            .when(txn.create_revision(key) == 0)
            .then(txn.put(key, b"", lease=self.session.lease_id))
            .otherwise(txn.get(key))
            .commit()
        )
        revision = response.header.revision
        if not response.succeeded:
            revision = response.responses[0].response_range.kvs[0].create_revision
        self.key, self.revision = key, revision
        try:
            await _wait_deletes(self.client, self.prefix, revision - 1)
            mine = await self.client.get(key)
            if not mine.kvs or mine.kvs[0].create_revision != revision:
                raise SessionExpiredError("the session expired while waiting for the lock")
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.unlock()
            raise

    async def unlock(self) -> None:
        if self.key:
            await self.client.delete(self.key)
            self.key, self.revision = b"", 0

    def is_owner(self) -> pb.Compare:
        """A compare that holds only while this mutex is owned, for guarded txns."""
        return txn.create_revision(self.key) == self.revision

    async def __aenter__(self) -> Mutex:
        await self.lock()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.unlock()
