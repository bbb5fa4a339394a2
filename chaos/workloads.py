"""Workloads: concurrent clients that drive the cluster and record what they saw.

Each workload runs until its ``stop`` event is set and records into a shared
:class:`~chaos.history.History` (register operations) or its own log
objects (watchers, leases, locks). Every request has a deadline; loops pace
themselves with short sleeps (pacing, not synchronisation).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from chaos.checkers import Batch, Event, LeaseLog, WatcherLog
from chaos.history import FAIL, INFO, OK, History, Op
from election import Callbacks, ElectionConfig, LeaderElector, Leadership, LeadershipLost, fence_key
from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore.client import Client, EtcdError, LeaseNotFoundError, txn
from kvstore.client.watch import WatchBatch

log = logging.getLogger(__name__)

PREFIX = "/chaos/"
KV_PREFIX = PREFIX + "kv/"
MULTI_PREFIX = PREFIX + "multi/"
LEASE_PREFIX = PREFIX + "lease/"
LOCK_KEY = PREFIX + "lock/owner"
LOCK_DATA = PREFIX + "lock/data"
# The election package's lock (its record and fencing keys live under /registry/).
LOCK_NAMESPACE = "chaos"
LOCK_NAME = "lock"
# Deadline of one lease keepalive: well past any wait inside the store (a member
# forwarding to a leader gives up after two election timeouts, and a keepalive on
# an expired lease waits for its revoke), so a timeout means the store is stuck.
KEEPALIVE_TIMEOUT = 10.0


def _value_of(kvs: Any) -> tuple[str | None, int]:
    if not kvs:
        return None, 0
    return kvs[0].value.decode(), int(kvs[0].mod_revision)


async def run_watched(
    worker: Awaitable[None], name: str, stop: anyio.Event, ended_early: list[str]
) -> None:
    """Run one worker; note ``name`` in ``ended_early`` if it ends while the campaign goes on.

    Workers loop until ``stop``; one that ends before (a cancellation leaking out
    of a client call ends a task silently) would otherwise take its share of the
    checks with it unnoticed.
    """
    try:
        await worker
    finally:
        if not stop.is_set():
            log.warning("workload task %s ended before the campaign did", name)
            ended_early.append(name)


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
    ended_early: list[str] = field(default_factory=list)

    def key(self, i: int) -> str:
        return f"{KV_PREFIX}k{i}"

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.workers):
                worker = self._worker(f"kv{w}", random.Random(self.rng.getrandbits(64)), stop)
                tg.start_soon(run_watched, worker, f"kv{w}", stop, self.ended_early)

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
    ended_early: list[str] = field(default_factory=list)

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.watchers):
                name = f"watch{w}"
                tg.start_soon(run_watched, self._watcher(name, stop), name, stop, self.ended_early)

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
    endpoints: list[str],
    prefix: str,
    start_revision: int,
    upto: int,
    stall: float = 60.0,
    limit: float = 3600.0,
) -> list[Event]:
    """Read the committed events under ``prefix`` from ``start_revision`` through ``upto``.

    Stops once an event at ``upto`` arrived, or a progress notification at or
    past ``upto`` said every earlier event was delivered (the members send them
    periodically once caught up; a member restarted just before may still be
    applying), or the stream went quiet for two seconds after reporting a
    revision >= ``upto`` (the last revisions may hold no event under ``prefix``).
    It reads for as long as the revision keeps advancing (a 1000-round campaign's
    history takes minutes on a busy machine), and returns what it has once it
    did not for ``stall`` seconds, or after ``limit``: a member that lost acknowledged
    writes may never reach ``upto``, and the checkers report the events missing
    from its history rather than the campaign failing.
    """
    events: list[Event] = []
    if upto < start_revision:
        return events
    stalled = False
    with anyio.move_on_after(limit) as deadline:
        async with (
            Client(endpoints) as client,
            client.watch(
                prefix,
                prefix=True,
                start_revision=start_revision,
                prev_kv=True,
                progress_notify=True,
            ) as watch,
        ):
            iterator = watch.__aiter__()
            header = 0
            # Progress notifications at the same revision (a member that lost writes
            # stays behind ``upto`` for good) are no progress: only a later revision is.
            give_up = time.monotonic() + stall
            while not events or events[-1].revision < upto:
                wait = 2.0 if header >= upto else give_up - time.monotonic()
                batch = None
                if wait > 0:
                    with anyio.move_on_after(wait):
                        batch = await iterator.__anext__()
                if batch is None:
                    stalled = header < upto
                    break
                if int(batch.revision) > header or batch.events:
                    give_up = time.monotonic() + stall
                header = max(header, int(batch.revision))
                if batch.is_progress_notify and header >= upto:
                    break
                events.extend(event_from_pb(e) for e in batch.events)
    if deadline.cancelled_caught or stalled:
        log.warning(
            "history under %s from %s: revision %d of %d, %s; reading no further",
            prefix,
            endpoints[0],
            events[-1].revision if events else 0,
            upto,
            f"nothing for {stall:.0f}s" if stalled else f"still reading after {limit:.0f}s",
        )
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
    ended_early: list[str] = field(default_factory=list)

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.workers):
                worker = self._worker(f"lease{w}", random.Random(self.rng.getrandbits(64)), stop)
                tg.start_soon(run_watched, worker, f"lease{w}", stop, self.ended_early)

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
                ttl = await client.keepalive_once(lease.lease_id, timeout=KEEPALIVE_TIMEOUT)
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


class LockLost(Exception):
    """A guarded write was refused: the tenure it was made under is over."""


class HolderClient(Client):
    """A contender's client that can be paused like a stopped process.

    While paused, every KV request and lease renewal it is asked to send
    waits and goes out when the pause ends, as the requests of a SIGSTOPped
    (or GC-stalled) process do; a request already past its sender's own
    checks is then delivered late, which is what fencing is for.
    """

    paused_until: float = 0.0

    async def __aenter__(self) -> HolderClient:
        await super().__aenter__()
        return self

    def pause(self, seconds: float) -> None:
        self.paused_until = time.monotonic() + seconds

    async def _until_resumed(self) -> None:
        left = self.paused_until - time.monotonic()
        if left > 0:
            await anyio.sleep(left)

    async def txn_request(
        self, request: pb.TxnRequest, *, timeout: float | None = None
    ) -> pb.TxnResponse:
        await self._until_resumed()
        return await super().txn_request(request, timeout=timeout)

    async def range(
        self, request: pb.RangeRequest, *, timeout: float | None = None
    ) -> pb.RangeResponse:
        await self._until_resumed()
        return await super().range(request, timeout=timeout)

    async def keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        await self._until_resumed()
        return await super().keepalive_once(lease_id, timeout=timeout)


async def _no_renewal() -> None:
    return None


@dataclass
class Tenure:
    """One holding of the lock: its fencing token and how to use it."""

    token: int
    #: Put ``LOCK_DATA`` iff this tenure is current; the revision, or :class:`LockLost`.
    write: Callable[[str], Awaitable[int]]
    #: Keep the tenure alive before a write, where the backend needs the holder to.
    renew: Callable[[], Awaitable[None]] = _no_renewal


Hold = Callable[[Tenure], Awaitable[None]]


class LockBackend(Protocol):
    """How contenders take, use and give up the lock, and how its history reads.

    ``tenure_key`` is the key whose committed writes mark tenures; with
    ``tokens_are_create_revisions`` a tenure is the life of that key and its
    token the key's create revision (a lease lock), otherwise every put of a
    non-empty value starts a tenure whose token is that put's revision, and
    an empty value or a delete ends it (a fencing key).
    """

    tenure_key: str
    tokens_are_create_revisions: bool
    #: How long a holder pause lasts: long enough for another contender to take over.
    stall_seconds: float

    async def contend(self, client: HolderClient, who: str, hold: Hold) -> None:
        """Take the lock once (or give up), run ``hold`` while holding it, then let go."""
        ...


class ElectorLock:
    """The ``election`` package: :class:`~election.LeaderElector` lease locks (client-go
    semantics) whose fencing token is the mod revision of the lock's fencing key, and
    guarded writes through :class:`~election.Leadership`.

    The elector renews by itself; a holder pause stops its renewals too (they are
    requests of the paused client), so standbys take over after ``lease_duration``.
    """

    tokens_are_create_revisions = False

    def __init__(
        self, lease_duration: float = 3.0, renew_deadline: float = 2.0, retry_period: float = 0.5
    ) -> None:
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.tenure_key = fence_key(LOCK_NAMESPACE, LOCK_NAME)
        self.stall_seconds = lease_duration + 1.5

    async def contend(self, client: HolderClient, who: str, hold: Hold) -> None:
        config = ElectionConfig(
            name=LOCK_NAME,
            namespace=LOCK_NAMESPACE,
            identity=who,
            lease_duration=self.lease_duration,
            renew_deadline=self.renew_deadline,
            retry_period=self.retry_period,
            release_on_cancel=True,
        )

        async def lead(leadership: Leadership) -> None:
            await hold(Tenure(leadership.token, functools.partial(self._write, leadership)))

        await LeaderElector(client, config, Callbacks(lead)).run()

    @staticmethod
    async def _write(leadership: Leadership, data: str) -> int:
        try:
            response = await leadership.put(LOCK_DATA, data)
        except LeadershipLost as lost:
            raise LockLost(str(lost)) from lost
        return int(response.header.revision)


class TxnLeaseLock:
    """etcd's own primitives: a lease plus a create-if-absent transaction; the token is
    the create revision of the lock key (etcd's fencing recipe). The holder renews the
    lease before each write; a holder pause lets it expire."""

    tenure_key = LOCK_KEY
    tokens_are_create_revisions = True

    def __init__(self, ttl: int = 2) -> None:
        self.ttl = ttl
        self.stall_seconds = ttl + 1.5

    async def contend(self, client: HolderClient, who: str, hold: Hold) -> None:
        lease_id = int((await client.grant(self.ttl)).ID)
        try:
            resp = await (
                client.txn()
                .when(txn.create_revision(LOCK_KEY) == 0)
                .then(txn.put(LOCK_KEY, who, lease=lease_id))
                .commit()
            )
            if not resp.succeeded:
                return
            token = int(resp.header.revision)
            await hold(
                Tenure(
                    token,
                    functools.partial(self._write, client, token),
                    functools.partial(self._renew, client, lease_id),
                )
            )
            await (
                client.txn()
                .when(txn.create_revision(LOCK_KEY) == token)
                .then(txn.delete(LOCK_KEY))
                .commit()
            )
        finally:
            with contextlib.suppress(EtcdError):
                await client.revoke(lease_id)

    @staticmethod
    async def _renew(client: HolderClient, lease_id: int) -> None:
        with contextlib.suppress(LeaseNotFoundError):  # lost: the next write must fail
            await client.keepalive_once(lease_id, timeout=KEEPALIVE_TIMEOUT)

    @staticmethod
    async def _write(client: HolderClient, token: int, data: str) -> int:
        resp = await (
            client.txn()
            .when(txn.create_revision(LOCK_KEY) == token)
            .then(txn.put(LOCK_DATA, data))
            .commit()
        )
        if not resp.succeeded:
            raise LockLost(f"token {token} is no longer the lock's")
        return int(resp.header.revision)


LOCK_BACKENDS: dict[str, Callable[[], LockBackend]] = {
    "election": ElectorLock,
    "txn": TxnLeaseLock,
}


@dataclass
class LockWorkload:
    """Contenders take the lock, write through fenced writes, and sometimes stall.

    A stall pauses the holder's client (:class:`HolderClient`) for the
    backend's ``stall_seconds`` just before a guarded write that has passed
    the holder's own checks: renewals stop, another contender may take over,
    and then the late write reaches the store, which must refuse it if the
    tenure is over.
    """

    endpoints: list[str]
    rng: random.Random
    contenders: int = 3
    stall_probability: float = 0.3
    backend: LockBackend = field(default_factory=ElectorLock)
    acquisitions: list[tuple[str, int]] = field(default_factory=list)
    guarded_acks: list[tuple[str, int, int]] = field(default_factory=list)
    stalls: int = 0
    # Writes made after a stall that the store refused: the fence at work.
    stalled_writes_refused: int = 0
    ended_early: list[str] = field(default_factory=list)

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for w in range(self.contenders):
                rng = random.Random(self.rng.getrandbits(64))
                worker = self._contender(f"locker{w}", rng, stop)
                tg.start_soon(run_watched, worker, f"locker{w}", stop, self.ended_early)

    async def _contender(self, name: str, rng: random.Random, stop: anyio.Event) -> None:
        async with (
            HolderClient(self.endpoints, default_timeout=2.0) as client,
            anyio.create_task_group() as tg,
        ):

            async def cancel_at_stop() -> None:
                # A standby waits for the lock indefinitely; a holder lets go as it is cancelled.
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_at_stop)
            while not stop.is_set():
                hold = functools.partial(self._hold, client, name, rng, stop)
                try:
                    await self.backend.contend(client, name, hold)
                except (EtcdError, OSError) as error:
                    log.info("%s: %s", name, error)
                await anyio.sleep(rng.uniform(0.05, 0.3))

    async def _hold(
        self,
        client: HolderClient,
        name: str,
        rng: random.Random,
        stop: anyio.Event,
        tenure: Tenure,
    ) -> None:
        self.acquisitions.append((name, tenure.token))
        for seq in range(1, rng.randint(1, 5) + 1):
            if stop.is_set():
                break
            stalled = rng.random() < self.stall_probability / 5
            if stalled:
                self.stalls += 1
                client.pause(self.backend.stall_seconds)
            data = json.dumps({"token": tenure.token, "who": name, "seq": seq})
            try:
                await tenure.renew()
                revision = await tenure.write(data)
            except LockLost as lost:
                log.info("%s: %s", name, lost)
                # Refused once the pause was over: the store's fence, not a local check.
                self.stalled_writes_refused += stalled and time.monotonic() >= client.paused_until
                return
            except (EtcdError, OSError) as error:  # maybe applied; only acks are judged
                log.info("%s: guarded write %d: %s", name, seq, error)
                continue
            self.guarded_acks.append((name, tenure.token, revision))
            await anyio.sleep(0.1)


def acked_ops(ops: list[Op]) -> list[Op]:
    """The register operations that were acknowledged."""
    return [op for op in ops if op.status == OK]
