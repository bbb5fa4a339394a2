"""LeaderElector: Kubernetes lease-lock semantics on any etcd v3 store, with fencing.

The algorithm is client-go's ``tryAcquireOrRenew``:

- A standby reads the record. Whenever the record's bytes change it notes
  the local monotonic time (``observed_at``). It may take the lock only when
  the record is empty/released, or when ``lease_duration`` has passed since
  ``observed_at`` without a change. Remote clocks are never read.
- Every write of the record is a Txn guarded by the record's mod_revision
  (optimistic concurrency), so two contenders can never both win.
- The leader renews every ``retry_period``; if no renewal succeeds for
  ``renew_deadline`` it stops leading. Since ``renew_deadline <
  lease_duration``, it has stopped acting before any standby may take over.

Beyond client-go, standbys *watch* the record, so a released lock is taken
over within one round trip and a crashed holder's lock as soon as its lease
runs out; and every acquisition yields a fencing token that guarded writes
compare in the store (see :mod:`election.record`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from election.config import JITTER_FACTOR, Clock, ElectionConfig, SystemClock
from election.errors import LeadershipLost
from election.record import LeaderElectionRecord, fence_key, format_time, record_key
from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client, EtcdError, txn
from kvstore.client.txn import Key

log = logging.getLogger(__name__)


@dataclass
class _Observed:
    """What this process last saw of the record, and when (local monotonic time)."""

    record: LeaderElectionRecord | None = None
    raw: bytes = b""
    mod_revision: int = 0  # 0: the key does not exist
    observed_at: float = 0.0


class Leadership:
    """Handed to ``on_started_leading``: the tenure of one acquisition.

    ``token`` is the fencing token (the store revision of the acquiring
    write); it strictly increases from holder to holder. ``lost`` is set when
    leadership ends; the task running ``on_started_leading`` is cancelled at
    the same moment. Guarded writes apply only while the store still shows
    this tenure, and raise :class:`LeadershipLost` otherwise.
    """

    def __init__(self, elector: LeaderElector, token: int) -> None:
        self._elector = elector
        self.token = token
        self.lost = anyio.Event()
        # True when the tenure ended against our will (renewals failed or
        # another holder took over), as opposed to a voluntary end.
        self.deposed = False

    def check(self) -> None:
        """Raise LeadershipLost unless this tenure is current and recently renewed."""
        if self.lost.is_set() or not self._elector._renewed_recently():
            raise LeadershipLost(f"{self._elector.config.identity} is no longer the leader")

    async def txn(
        self,
        compare: list[pb.Compare] | None = None,
        success: list[pb.RequestOp] | None = None,
        failure: list[pb.RequestOp] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.TxnResponse:
        """Run a txn only if this tenure still holds the lock in the store.

        The caller's txn is nested inside one that compares the fencing key's
        mod_revision with ``token``; its own compares and branches behave as
        usual. Returns the caller's txn response (with the outer header).
        """
        self.check()
        inner = pb.TxnRequest(compare=compare or [], success=success or [], failure=failure or [])
        fence = self._elector._fence_key
        response = await (
            self._elector.client.txn(timeout=timeout)
            .when(txn.mod_revision(fence) == self.token)
            .then(pb.RequestOp(request_txn=inner))
            .commit()
        )
        if not response.succeeded:
            self._elector._note_deposed(self)
            raise LeadershipLost(
                f"{self._elector.config.identity}: the lock changed hands; write rejected"
            )
        result = response.responses[0].response_txn
        result.header.CopyFrom(response.header)
        return result

    async def put(
        self, key: Key, value: Key, *, timeout: float | None = None, **options: Any
    ) -> pb.PutResponse:
        """Guarded put; options as :meth:`kvstore.client.Client.put`."""
        result = await self.txn(success=[txn.put(key, value, **options)], timeout=timeout)
        response = result.responses[0].response_put
        response.header.CopyFrom(result.header)
        return response

    async def delete(
        self,
        key: Key,
        range_end: Key | None = None,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> pb.DeleteRangeResponse:
        """Guarded delete; options as :meth:`kvstore.client.Client.delete`."""
        result = await self.txn(success=[txn.delete(key, range_end, **options)], timeout=timeout)
        response = result.responses[0].response_delete_range
        response.header.CopyFrom(result.header)
        return response


StartedLeading = Callable[[Leadership], Awaitable[None]]


@dataclass
class Callbacks:
    """What the elector calls. ``on_started_leading`` runs in its own task and is
    cancelled when leadership is lost; ``on_stopped_leading`` runs after that
    task has finished; ``on_new_leader`` gets each newly observed holder
    (including this process)."""

    on_started_leading: StartedLeading
    on_stopped_leading: Callable[[], None] = lambda: None
    on_new_leader: Callable[[str], None] = field(default=lambda identity: None)


class LeaderElector:
    """Contend for a lease lock; lead while holding it.

    ``await elector.run()`` campaigns until this process holds the lock, runs
    ``on_started_leading`` until leadership is lost (or ``run`` is cancelled),
    calls ``on_stopped_leading`` and returns. Call it again to rejoin as a
    standby.
    """

    def __init__(
        self,
        client: Client,
        config: ElectionConfig,
        callbacks: Callbacks,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.callbacks = callbacks
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._record_key = record_key(config.namespace, config.name)
        self._fence_key = fence_key(config.namespace, config.name)
        self._observed = _Observed()
        self._reported_leader = ""
        self._leadership: Leadership | None = None
        self._last_renew_sent = float("-inf")  # send time of the last successful write

    # ---- state ----

    @property
    def is_leader(self) -> bool:
        return self._leadership is not None and not self._leadership.lost.is_set()

    @property
    def leader(self) -> str:
        """The holder this process last observed ("" when none)."""
        record = self._observed.record
        return record.holderIdentity if record else ""

    def healthy(self, tolerance: float = 0.0) -> bool:
        """False if this process leads but has not renewed for lease_duration + tolerance.

        Like client-go's HealthzAdaptor: a liveness probe on it restarts a
        leader whose renew loop is stuck.
        """
        if not self.is_leader:
            return True
        overdue = self._clock.monotonic() - self._last_renew_sent
        return overdue <= self.config.lease_duration + tolerance

    def _renewed_recently(self) -> bool:
        return self._clock.monotonic() - self._last_renew_sent < self.config.renew_deadline

    def _note_deposed(self, leadership: Leadership) -> None:
        if not leadership.lost.is_set():
            log.warning("%s: deposed (fencing token %d)", self.config.identity, leadership.token)
            leadership.deposed = True
            leadership.lost.set()

    # ---- the store ----

    def _observe(self, raw: bytes, mod_revision: int) -> None:
        if mod_revision == self._observed.mod_revision and raw == self._observed.raw:
            return
        record: LeaderElectionRecord | None = None
        if raw:
            try:
                record = LeaderElectionRecord.decode(raw)
            except ValueError as error:
                log.error("%s: %s; treating the lock as held", self.config.identity, error)
                record = LeaderElectionRecord("<unreadable>", 0, "", "", 0)
        self._observed = _Observed(record, raw, mod_revision, self._clock.monotonic())
        holder = record.holderIdentity if record else ""
        if holder and holder != self._reported_leader:
            self._reported_leader = holder
            self.callbacks.on_new_leader(holder)

    async def _read(self, timeout: float) -> None:
        response = await self.client.get(self._record_key, timeout=timeout)
        if response.kvs:
            self._observe(response.kvs[0].value, response.kvs[0].mod_revision)
        else:
            self._observe(b"", 0)

    def _new_record(self, holder: str, duration: int) -> LeaderElectionRecord:
        now = format_time(self._clock.wall())
        old = self._observed.record
        if old is not None and old.holderIdentity == self.config.identity and holder:
            return LeaderElectionRecord(
                holder, duration, old.acquireTime, now, old.leaderTransitions
            )
        transitions = old.leaderTransitions + 1 if old is not None else 0
        return LeaderElectionRecord(holder, duration, now, now, transitions)

    async def _try_acquire_or_renew(self, timeout: float) -> bool:
        """One attempt; True when this process holds the lock afterwards."""
        leading = self.is_leader
        if not leading:
            await self._read(timeout)
            observed = self._observed
            record = observed.record
            if record is not None and record.holderIdentity:
                expires = observed.observed_at + self.config.lease_duration
                if self._clock.monotonic() < expires:
                    return False
        observed = self._observed
        record = self._new_record(self.config.identity, round(self.config.lease_duration))
        guard = (
            txn.create_revision(self._record_key) == 0
            if observed.mod_revision == 0
            else txn.mod_revision(self._record_key) == observed.mod_revision
        )
        writes = [txn.put(self._record_key, record.encode())]
        compares = [guard]
        if leading:
            assert self._leadership is not None
            compares.append(txn.mod_revision(self._fence_key) == self._leadership.token)
        else:
            writes.append(txn.put(self._fence_key, self.config.identity))
        sent = self._clock.monotonic()
        response = await self.client.txn(timeout=timeout).when(*compares).then(*writes).commit()
        if not response.succeeded:
            # Someone else wrote first (or our earlier, ambiguous write landed):
            # re-read and decide again on the next attempt.
            await self._read(timeout)
            if leading and self.leader != self.config.identity:
                assert self._leadership is not None
                self._note_deposed(self._leadership)
            return False
        self._observe(record.encode(), response.header.revision)
        self._last_renew_sent = sent
        if not leading:
            self._leadership = Leadership(self, token=response.header.revision)
            log.info(
                "%s: acquired %s (fencing token %d)",
                self.config.identity,
                self._record_key,
                response.header.revision,
            )
        return True

    # ---- the loops ----

    def _jittered_retry(self) -> float:
        return self.config.retry_period * (1 + self._rng.random() * JITTER_FACTOR)

    async def _acquire(self) -> None:
        """Return once this process holds the lock."""
        async with self.client.watch(self._record_key) as watch:
            watching = True
            while True:
                try:
                    if await self._try_acquire_or_renew(timeout=self.config.retry_period):
                        return
                except EtcdError as error:
                    log.info("%s: acquire attempt failed: %s", self.config.identity, error)
                wait = self._jittered_retry()
                observed = self._observed
                if observed.record is not None and observed.record.holderIdentity:
                    until_expiry = (
                        observed.observed_at + self.config.lease_duration - self._clock.monotonic()
                    )
                    wait = min(wait, max(until_expiry, 0.0))
                if not watching:
                    await anyio.sleep(wait)  # polling, as client-go does
                    continue
                with anyio.move_on_after(wait):
                    # A change of the record (release, takeover, renewal) wakes us at once.
                    try:
                        batch = await anext(aiter(watch))
                    except (EtcdError, StopAsyncIteration) as error:
                        log.info("%s: watch ended (%r); polling", self.config.identity, error)
                        watching = False
                        continue
                    for event in batch.events:
                        deleted = event.type == kv_pb2.Event.DELETE
                        self._observe(
                            b"" if deleted else event.kv.value,
                            0 if deleted else event.kv.mod_revision,
                        )

    async def _renew_until_lost(self, leadership: Leadership) -> None:
        """Renew every retry_period; return when leadership is lost."""
        while not leadership.lost.is_set():
            with anyio.move_on_after(self.config.retry_period):
                await leadership.lost.wait()
            while not leadership.lost.is_set():
                remaining = self.config.renew_deadline - (
                    self._clock.monotonic() - self._last_renew_sent
                )
                if remaining <= 0:
                    log.warning(
                        "%s: no renewal for %.1fs; giving up leadership",
                        self.config.identity,
                        self.config.renew_deadline,
                    )
                    self._note_deposed(leadership)
                    return
                # Several attempts fit in the deadline: one call stuck on a store
                # member that lost its leader must not use up the whole budget.
                attempt_timeout = min(remaining, self.config.renew_deadline / 3)
                try:
                    if await self._try_acquire_or_renew(timeout=attempt_timeout):
                        break
                except EtcdError as error:
                    log.info("%s: renewal failed: %s", self.config.identity, error)
                with anyio.move_on_after(min(self.config.retry_period, max(remaining, 0.0))):
                    await leadership.lost.wait()

    async def _release(self, leadership: Leadership) -> None:
        """Hand the lock back (holder "" and a 1 s lease) so a standby takes over at once."""
        observed = self._observed
        record = self._new_record("", 1)
        try:
            response = await (
                self.client.txn(timeout=self.config.retry_period)
                .when(
                    txn.mod_revision(self._record_key) == observed.mod_revision,
                    txn.mod_revision(self._fence_key) == leadership.token,
                )
                .then(txn.put(self._record_key, record.encode()), txn.put(self._fence_key, ""))
                .commit()
            )
            if response.succeeded:
                log.info("%s: released %s", self.config.identity, self._record_key)
        except EtcdError as error:
            log.warning("%s: release failed: %s", self.config.identity, error)

    async def run(self) -> None:
        """Campaign, lead until leadership is lost or this call is cancelled, then return."""
        await self._acquire()
        leadership = self._leadership
        assert leadership is not None
        try:
            async with anyio.create_task_group() as tasks:

                async def lead() -> None:
                    try:
                        await self.callbacks.on_started_leading(leadership)
                    finally:
                        leadership.lost.set()

                tasks.start_soon(lead)
                await self._renew_until_lost(leadership)
                tasks.cancel_scope.cancel()
        finally:
            leadership.lost.set()
            self._leadership = None
            with anyio.CancelScope(shield=True):
                if not leadership.deposed and self.config.release_on_cancel:
                    await self._release(leadership)
                self.callbacks.on_stopped_leading()
