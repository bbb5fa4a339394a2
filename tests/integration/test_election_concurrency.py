"""etcd-style election and mutex recipes against a real store."""

from __future__ import annotations

import uuid

import anyio

from kvstore.client import Client
from kvstore.client.concurrency import (
    Election,
    ElectionNoLeaderError,
    ElectionNotLeaderError,
    Mutex,
    Session,
)
from kvstore.local.etcd import EtcdCluster


async def test_campaign_waits_for_the_leader_to_resign(etcd: EtcdCluster) -> None:
    prefix = f"/tests/elect-{uuid.uuid4().hex[:8]}"
    async with (
        Client(etcd.endpoints) as client,
        Session(client, ttl=10) as s1,
        Session(client, ttl=10) as s2,
    ):
        first, second = Election(s1, prefix), Election(s2, prefix)
        try:
            await Election(s1, prefix).leader()
        except ElectionNoLeaderError:
            pass
        else:
            raise AssertionError("no one campaigned yet")
        await first.campaign("one")
        assert (await second.leader()).value == b"one"

        elected = anyio.Event()

        async def campaign_second() -> None:
            await second.campaign("two")
            elected.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(campaign_second)
            observed = []
            async for kv in first.observe():
                observed.append(kv.value)
                if kv.value == b"one":
                    await first.proclaim("one, again")
                elif kv.value == b"one, again":
                    assert not elected.is_set(), "second elected while first leads"
                    await first.resign()
                elif kv.value == b"two":
                    break
            with anyio.fail_after(10):
                await elected.wait()
        assert observed == [b"one", b"one, again", b"two"]
        assert (await first.leader()).value == b"two"
        try:
            await first.proclaim("stale")
        except ElectionNotLeaderError:
            pass
        else:
            raise AssertionError("a resigned leader must not proclaim")


async def test_mutex_excludes_and_hands_over(etcd: EtcdCluster) -> None:
    prefix = f"/tests/mutex-{uuid.uuid4().hex[:8]}"
    async with (
        Client(etcd.endpoints) as client,
        Session(client, ttl=10) as s1,
        Session(client, ttl=10) as s2,
    ):
        holder, waiter = Mutex(s1, prefix), Mutex(s2, prefix)
        await holder.lock()
        acquired = anyio.Event()

        async def lock_second() -> None:
            await waiter.lock()
            acquired.set()

        owner = holder.is_owner()
        async with (
            client.watch(prefix + "/", prefix=True) as queued,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(lock_second)
            # The waiter's key appears (it is queued) but it does not own the lock.
            with anyio.fail_after(10):
                await anext(aiter(queued))
            assert not acquired.is_set()
            assert (await client.txn().when(owner).commit()).succeeded
            await holder.unlock()
            with anyio.fail_after(10):
                await acquired.wait()
        stale = await client.txn().when(owner).commit()
        assert not stale.succeeded
        await waiter.unlock()


async def test_session_expiry_while_waiting_loses_the_place(etcd: EtcdCluster) -> None:
    prefix = f"/tests/expire-{uuid.uuid4().hex[:8]}"
    async with (
        Client(etcd.endpoints) as client,
        Session(client, ttl=10) as s1,
        Session(client, ttl=10) as s2,
    ):
        await Mutex(s1, prefix).lock()
        waiter = Mutex(s2, prefix)
        async with (
            client.watch(prefix + "/", prefix=True) as queued,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(waiter.lock)
            with anyio.fail_after(10):
                await anext(aiter(queued))
            await client.revoke(s2.lease_id)
            with anyio.fail_after(10):
                await s2.expired.wait()
            tasks.cancel_scope.cancel()
        assert (await client.get(prefix + "/", prefix=True)).count == 1
