"""Workloads: concurrent clients that drive the cluster and record what they saw.

Each workload runs until its ``stop`` event is set and records into a shared
:class:`~kvstore.chaos.history.History` (register operations) or its own log
objects (watchers, leases, locks). Every request has a deadline; loops pace
themselves with short sleeps (pacing, not synchronisation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from kvstore.chaos.checkers import Batch, Event, LeaseLog, WatcherLog
from kvstore.chaos.history import FAIL, INFO, OK, History, Op
from kvstore.client import Client, EtcdError, LeaseNotFoundError, txn
from kvstore.client.watch import WatchBatch

log = logging.getLogger(__name__)

PREFIX = "/chaos/"
KV_PREFIX = PREFIX + "kv/"
MULTI_PREFIX = PREFIX + "multi/"
LEASE_PREFIX = PREFIX + "lease/"
LOCK_KEY = PREFIX + "lock/owner"
LOCK_DATA = PREFIX + "lock/data"


def _value_of(kvs: Any) -> tuple[str | None, int]:
    if not kvs:
        return None, 0
    return kvs[0].value.decode(), int(kvs[0].mod_revision)


# ---------------------------------------------------------------------------- register


@dataclass
class RegisterWorkload:
    """put / get / CAS (on value or on mod_revision) / delete over a few keys.

    Values are unique (``<worker>-<n>``) so the linearizability checker can
    tell writes apart.
    """

    endpoints: list[str]
    history: History
    rng: random.Random
    workers: int = 4
    keys: int = 4
    op_timeout: float = 2.0
    pace: float = 0.01

    def key(self, i: int) -> str:
        return f"{KV_PREFIX}k{i}"

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.workers):
                seed = self.rng.getrandbits(64)
                tg.start_soon(self._worker, f"kv{w}", random.Random(seed), stop)

    async def _worker(self, name: str, rng: random.Random, stop: anyio.Event) -> None:
        seen: dict[str, tuple[str | None, int]] = {}
        n = 0
        async with Client(self.endpoints, default_timeout=self.op_timeout) as client:
            while not stop.is_set():
                n += 1
                key = self.key(rng.randrange(self.keys))
                roll = rng.random()
                value = f"{name}-{n}"
                if roll < 0.4:
                    await self._get(client, name, key, seen)
                elif roll < 0.65:
                    await self._put(client, name, key, value)
                elif roll < 0.95:
                    await self._cas(client, name, key, value, seen, by_revision=rng.random() < 0.5)
                else:
                    await self._delete(client, name, key)
                await anyio.sleep(rng.random() * self.pace)

    async def _get(
        self, client: Client, name: str, key: str, seen: dict[str, tuple[str | None, int]]
    ) -> None:
        op = self.history.invoke(name, "get", key)
        try:
            resp = await client.get(key)
        except (EtcdError, OSError) as error:
            self.history.complete(op, FAIL, error=type(error).__name__)
            return
        value, mod = _value_of(resp.kvs)
        seen[key] = (value, mod)
        self.history.complete(op, OK, value, int(resp.header.revision))

    async def _put(self, client: Client, name: str, key: str, value: str) -> None:
        op = self.history.invoke(name, "put", key, value=value)
        try:
            resp = await client.put(key, value)
        except (EtcdError, OSError) as error:
            self.history.complete(op, INFO, error=type(error).__name__)
            return
        self.history.complete(op, OK, None, int(resp.header.revision))

    async def _delete(self, client: Client, name: str, key: str) -> None:
        op = self.history.invoke(name, "delete", key)
        try:
            resp = await client.delete(key)
        except (EtcdError, OSError) as error:
            self.history.complete(op, INFO, error=type(error).__name__)
            return
        self.history.complete(op, OK, int(resp.deleted), int(resp.header.revision))

    async def _cas(
        self,
        client: Client,
        name: str,
        key: str,
        value: str,
        seen: dict[str, tuple[str | None, int]],
        *,
        by_revision: bool,
    ) -> None:
        expect, mod = seen.get(key, (None, 0))
        if by_revision:
            compare = txn.mod_revision(key) == mod
        else:
            if expect is None:
                return  # a value compare on a missing key is always false; skip
            compare = txn.value(key) == expect
        op = self.history.invoke(
            name, "cas", key, value=value, expect=expect, extra={"mod_revision": mod}
        )
        try:
            resp = await (
                client.txn()
                .when(compare)
                .then(txn.put(key, value))
                .otherwise(txn.get(key))
                .commit()
            )
        except (EtcdError, OSError) as error:
            self.history.complete(op, INFO, error=type(error).__name__)
            return
        if resp.succeeded:
            self.history.complete(op, OK, [True, None], int(resp.header.revision))
        else:
            current, cur_mod = _value_of(resp.responses[0].response_range.kvs)
            seen[key] = (current, cur_mod)
            self.history.complete(op, OK, [False, current], int(resp.header.revision))


@dataclass
class MultiKeyWorkload:
    """Writes two keys in one transaction (one revision) so watch atomicity is exercised."""

    endpoints: list[str]
    history: History
    op_timeout: float = 2.0
    pace: float = 0.05

    async def run(self, stop: anyio.Event) -> None:
        n = 0
        async with Client(self.endpoints, default_timeout=self.op_timeout) as client:
            while not stop.is_set():
                n += 1
                value = f"multi-{n}"
                op = self.history.invoke(
                    "multi",
                    "multi",
                    MULTI_PREFIX,
                    value=value,
                    extra={"keys": [MULTI_PREFIX + "a", MULTI_PREFIX + "b"]},
                )
                try:
                    resp = await (
                        client.txn()
                        .then(
                            txn.put(MULTI_PREFIX + "a", value), txn.put(MULTI_PREFIX + "b", value)
                        )
                        .commit()
                    )
                    self.history.complete(op, OK, None, int(resp.header.revision))
                except (EtcdError, OSError) as error:
                    self.history.complete(op, INFO, error=type(error).__name__)
                await anyio.sleep(self.pace)


# ---------------------------------------------------------------------------- watch


def event_from_pb(e: Any) -> Event:
    """Convert an mvccpb.Event into a checker :class:`Event`."""
    typ = "delete" if e.type == 1 else "put"
    prev = e.prev_kv if e.HasField("prev_kv") else None
    return Event(
        type=typ,
        key=e.kv.key.decode(),
        value=e.kv.value.decode() if typ == "put" else "",
        revision=int(e.kv.mod_revision),
        create_revision=int(e.kv.create_revision),
        prev_value=prev.value.decode() if prev is not None else None,
        prev_mod_revision=int(prev.mod_revision) if prev is not None else None,
    )


@dataclass
class WatchWorkload:
    """Watchers on the chaos prefix (prev_kv, progress notifications) recording every batch."""

    endpoints: list[str]
    watchers: int = 2
    prefix: str = PREFIX
    request_progress: bool = False
    logs: list[WatcherLog] = field(default_factory=list)

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.watchers):
                tg.start_soon(self._watcher, f"watch{w}", stop)

    async def _watcher(self, name: str, stop: anyio.Event) -> None:
        start = 1
        segment = 0
        while not stop.is_set():
            wlog = WatcherLog(f"{name}.{segment}", self.prefix, start)
            self.logs.append(wlog)
            try:
                async with (
                    Client(self.endpoints) as client,
                    client.watch(
                        self.prefix,
                        prefix=True,
                        start_revision=start,
                        prev_kv=True,
                        progress_notify=True,
                    ) as watch,
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(self._ask_progress, client, stop, tg.cancel_scope)
                    async for batch in watch:
                        self._record(wlog, batch)
                        if stop.is_set():
                            break
                    tg.cancel_scope.cancel()
            except (EtcdError, OSError) as error:
                wlog.error = f"{type(error).__name__}: {error}"
                log.info("%s ended: %s; reopening", wlog.name, wlog.error)
                await anyio.sleep(0.2)
            start = wlog.seen_up_to + 1
            segment += 1

    @staticmethod
    def _record(wlog: WatcherLog, batch: WatchBatch) -> None:
        wlog.batches.append(
            Batch(time.monotonic(), int(batch.revision), [event_from_pb(e) for e in batch.events])
        )

    async def _ask_progress(
        self, client: Client, stop: anyio.Event, scope: anyio.CancelScope
    ) -> None:
        while not stop.is_set():
            await anyio.sleep(0.5)
            if self.request_progress:
                with contextlib.suppress(EtcdError, OSError):
                    await client.request_progress()
        await anyio.sleep(0.5)  # let the last progress notify arrive, then end the watch
        scope.cancel()


async def read_history(
    endpoints: list[str], prefix: str, start_revision: int, upto: int, timeout: float = 60.0
) -> list[Event]:
    """Read the committed events under ``prefix`` from ``start_revision`` through ``upto``.

    Stops once an event at ``upto`` arrived, or the stream went quiet for two
    seconds after reporting a revision >= ``upto`` (the last revisions may
    hold no event under ``prefix``).
    """
    events: list[Event] = []
    if upto < start_revision:
        return events
    with anyio.fail_after(timeout):
        async with (
            Client(endpoints) as client,
            client.watch(prefix, prefix=True, start_revision=start_revision, prev_kv=True) as watch,
        ):
            iterator = watch.__aiter__()
            header = 0
            while not events or events[-1].revision < upto:
                batch = None
                with anyio.move_on_after(2.0 if header >= upto else timeout):
                    batch = await iterator.__anext__()
                if batch is None:
                    break
                header = max(header, int(batch.revision))
                events.extend(event_from_pb(e) for e in batch.events)
    return [e for e in events if e.revision <= upto]


# ---------------------------------------------------------------------------- leases


@dataclass
class LeaseWorkload:
    """Grant a lease, attach a key, keep it alive a while, then let it expire and watch it go."""

    endpoints: list[str]
    rng: random.Random
    workers: int = 2
    ttl: int = 2
    op_timeout: float = 2.0
    logs: list[LeaseLog] = field(default_factory=list)

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.workers):
                tg.start_soon(
                    self._worker, f"lease{w}", random.Random(self.rng.getrandbits(64)), stop
                )

    async def _worker(self, name: str, rng: random.Random, stop: anyio.Event) -> None:
        async with Client(self.endpoints, default_timeout=self.op_timeout) as client:
            while not stop.is_set():
                try:
                    await self._one(client, name, rng, stop)
                except (EtcdError, OSError) as error:
                    log.info("%s: %s", name, error)
                    await anyio.sleep(0.2)

    async def _one(self, client: Client, name: str, rng: random.Random, stop: anyio.Event) -> None:
        sent = time.monotonic()
        grant = await client.grant(self.ttl)
        lease = LeaseLog(int(grant.ID), int(grant.TTL), renewals=[(sent, int(grant.TTL))])
        self.logs.append(lease)
        key = f"{LEASE_PREFIX}{name}-{grant.ID:x}"
        lease.keys.append(key)
        with contextlib.suppress(EtcdError):  # maybe attached; only reads are judged
            await client.put(key, name, lease=grant.ID)
        keep_for = time.monotonic() + rng.uniform(0.5, 3.0)
        while time.monotonic() < keep_for and not stop.is_set():
            await anyio.sleep(lease.ttl / 3)
            sent = time.monotonic()
            try:
                ttl = await client.keepalive_once(lease.lease_id)
            except LeaseNotFoundError:
                lease.gone.append((time.monotonic(), "keepalive"))
                break
            except EtcdError:
                continue
            lease.renewals.append((sent, ttl))
        lease.stopped_renewing = time.monotonic()
        deadline = time.monotonic() + lease.ttl + 30.0
        while time.monotonic() < deadline:
            try:
                resp = await client.time_to_live(lease.lease_id)
            except EtcdError:
                await anyio.sleep(0.2)
                continue
            if resp.TTL == -1:
                lease.gone.append((time.monotonic(), "time_to_live"))
                break
            await anyio.sleep(0.2)
        if lease.gone:
            invoked = time.monotonic()
            try:
                got = await client.get(key)
                lease.key_reads.append((invoked, key, bool(got.kvs)))
            except EtcdError:
                pass


# ---------------------------------------------------------------------------- locks


class LockBackend(Protocol):
    """How a contender takes and uses a lock; the harness only needs these three calls.

    HOOK: ``election.LeaderElector`` (being written) will get an adapter
    implementing this protocol; today :class:`TxnLeaseLock` uses etcd's own
    primitives (a lease plus a create-if-absent transaction).
    """

    async def acquire(self, client: Client, who: str, lease_id: int) -> int | None:
        """Try once; return the fencing token if acquired."""
        ...

    async def guarded_write(self, client: Client, who: str, token: int, seq: int) -> int | None:
        """Write the protected key iff still holding ``token``; return its revision if accepted."""
        ...

    async def release(self, client: Client, token: int) -> None: ...


class TxnLeaseLock:
    """Lease + txn lock: token = create revision of the lock key (etcd's fencing recipe)."""

    async def acquire(self, client: Client, who: str, lease_id: int) -> int | None:
        resp = await (
            client.txn()
            .when(txn.create_revision(LOCK_KEY) == 0)
            .then(txn.put(LOCK_KEY, who, lease=lease_id))
            .commit()
        )
        return int(resp.header.revision) if resp.succeeded else None

    async def guarded_write(self, client: Client, who: str, token: int, seq: int) -> int | None:
        data = json.dumps({"token": token, "who": who, "seq": seq})
        resp = await (
            client.txn()
            .when(txn.create_revision(LOCK_KEY) == token)
            .then(txn.put(LOCK_DATA, data))
            .commit()
        )
        return int(resp.header.revision) if resp.succeeded else None

    async def release(self, client: Client, token: int) -> None:
        await (
            client.txn()
            .when(txn.create_revision(LOCK_KEY) == token)
            .then(txn.delete(LOCK_KEY))
            .commit()
        )


@dataclass
class LockWorkload:
    """Contenders take the lock, write through fenced transactions, and sometimes stall.

    A stall stops renewing the lease and sleeps past its TTL (a process pause
    of the holder, e.g. a long GC or SIGSTOP) and then tries a guarded write:
    the store must refuse it if someone else took over.
    """

    endpoints: list[str]
    rng: random.Random
    contenders: int = 3
    ttl: int = 2
    stall_probability: float = 0.3
    backend: LockBackend = field(default_factory=TxnLeaseLock)
    acquisitions: list[tuple[str, int]] = field(default_factory=list)
    guarded_acks: list[tuple[str, int, int]] = field(default_factory=list)
    stalls: int = 0

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.contenders):
                rng = random.Random(self.rng.getrandbits(64))
                tg.start_soon(self._contender, f"locker{w}", rng, stop)

    async def _contender(self, name: str, rng: random.Random, stop: anyio.Event) -> None:
        async with Client(self.endpoints, default_timeout=2.0) as client:
            while not stop.is_set():
                try:
                    await self._round(client, name, rng, stop)
                except (EtcdError, OSError) as error:
                    log.info("%s: %s", name, error)
                await anyio.sleep(rng.uniform(0.05, 0.3))

    async def _round(
        self, client: Client, name: str, rng: random.Random, stop: anyio.Event
    ) -> None:
        grant = await client.grant(self.ttl)
        lease_id = int(grant.ID)
        try:
            token = await self.backend.acquire(client, name, lease_id)
            if token is None:
                return
            self.acquisitions.append((name, token))
            for seq in range(1, rng.randint(1, 5) + 1):
                if stop.is_set():
                    break
                if rng.random() < self.stall_probability / 5:
                    self.stalls += 1
                    await anyio.sleep(self.ttl + 1.5)  # the holder "pauses"; no renewals
                with contextlib.suppress(LeaseNotFoundError):  # lost: the write must fail
                    await client.keepalive_once(lease_id)
                rev = await self.backend.guarded_write(client, name, token, seq)
                if rev is not None:
                    self.guarded_acks.append((name, token, rev))
                await anyio.sleep(0.1)
            await self.backend.release(client, token)
        finally:
            with contextlib.suppress(EtcdError):
                await client.revoke(lease_id)


def acked_ops(ops: list[Op]) -> list[Op]:
    """The register operations that were acknowledged."""
    return [op for op in ops if op.status == OK]
