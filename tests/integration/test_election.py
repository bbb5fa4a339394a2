"""LeaderElector against a real etcd and against our store; contenders are processes.

Shortened timings (lease 2 s, renew 1.5 s, retry 0.4 s) keep the run short;
``python -m election.bench`` measures the defaults. Safety is judged from the store's
history (the fencing key and the work key), not from what processes say.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from election import LeaderElectionRecord, fence_key, record_key
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from tests.integration.election_harness import ContenderPool

LEASE, RENEW, RETRY = 2.0, 1.5, 0.4
# Slack for a loaded 2-core machine on top of the bounds the design promises.
SLACK = 2.0


STORES = {"etcd": EtcdCluster, "kvstore": KVCluster}
Store = EtcdCluster | KVCluster


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh single-member store per test, a real etcd and ours: the checks read
    the store's history from revision 1, which a compaction by another test would remove."""
    cluster = STORES[request.param](root=tmp_path / "store", size=1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=sorted(STORES))
def store3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    cluster = STORES[request.param](root=tmp_path / "store3", size=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def pool(store: Store, tmp_path: Path) -> AsyncIterator[ContenderPool]:
    async with anyio.create_task_group() as tasks:
        contenders = ContenderPool(tasks, store.endpoints, tmp_path)
        try:
            yield contenders
        finally:
            await contenders.close()
            tasks.cancel_scope.cancel()


async def history(endpoints: list[str], key: str) -> list[kv_pb2.Event]:
    """Every event of ``key`` from revision 1 (nothing is compacted in these tests)."""
    async with Client(endpoints) as client:
        head = (await client.get(key)).header.revision
        events: list[kv_pb2.Event] = []
        async with client.watch(key, start_revision=1) as watch:
            async for batch in watch:
                events.extend(batch.events)
                if batch.revision >= head or (events and events[-1].kv.mod_revision >= head):
                    break
        return [e for e in events if e.kv.mod_revision <= head]


async def assert_fenced(endpoints: list[str], lock: str, work_key: str) -> list[tuple[int, str]]:
    """Every accepted guarded write lies inside its writer's tenure in the store's history.

    A tenure starts at the revision that wrote the fencing key with the holder's
    identity and ends at the next write of the fencing key.
    """
    fences = [
        (e.kv.mod_revision, e.kv.value.decode())
        for e in await history(endpoints, fence_key("tests", lock))
    ]
    tokens = [rev for rev, _ in fences]
    assert tokens == sorted(set(tokens)), "fencing tokens must strictly increase"
    for event in await history(endpoints, work_key):
        writer = event.kv.value.decode().split(":")[0]
        revision = event.kv.mod_revision
        tenure = [holder for rev, holder in fences if rev <= revision]
        assert tenure and tenure[-1] == writer, (
            f"write by {writer} at revision {revision} outside its tenure; fences {fences}"
        )
    return fences


def timings(lease: float = LEASE, renew: float = RENEW, retry: float = RETRY) -> list[str]:
    return ["--lease", str(lease), "--renew", str(renew), "--retry", str(retry)]


async def test_five_contenders_kill_and_release(pool: ContenderPool, store: Store) -> None:
    lock, work = "five", "/tests/five/work"
    args = [*timings(), "--lock", lock, "--work-key", work, "--release-on-cancel"]
    for i in range(5):
        await pool.start(f"c{i}", *args)

    leader = await pool.leader()
    await leader.wait_for(lambda e: e["event"] == "write" and e["ok"])

    # SIGKILL the leader: a standby takes over once the lease runs out.
    marks = pool.marks()
    killed_at = anyio.current_time()
    leader.signal(signal.SIGKILL)
    pool.contenders.remove(leader)
    successor = await pool.leader(after=marks)
    started = await successor.wait_for(
        lambda e: e["event"] == "started", after=marks[successor.identity]
    )
    crash_gap = started["t"] - killed_at
    assert crash_gap <= LEASE + RETRY + SLACK, f"takeover after SIGKILL took {crash_gap:.2f}s"
    await successor.wait_for(
        lambda e: e["event"] == "write" and e["ok"], after=marks[successor.identity]
    )

    # Graceful: SIGTERM releases the lock; a watching standby takes it at once.
    marks = pool.marks()
    released_at = anyio.current_time()
    successor.signal(signal.SIGTERM)
    await successor.wait_for(lambda e: e["event"] == "exit")
    pool.contenders.remove(successor)
    third = await pool.leader(after=marks)
    started = await third.wait_for(lambda e: e["event"] == "started", after=marks[third.identity])
    release_gap = started["t"] - released_at
    assert release_gap < LEASE, f"takeover after release took {release_gap:.2f}s"
    await third.wait_for(lambda e: e["event"] == "write" and e["ok"], after=marks[third.identity])

    fences = await assert_fenced(store.endpoints, lock, work)
    holders = [holder for _, holder in fences if holder]
    assert holders[:3] == [leader.identity, successor.identity, third.identity]

    records = [
        LeaderElectionRecord.decode(e.kv.value)
        for e in await history(store.endpoints, record_key("tests", lock))
        if e.type == kv_pb2.Event.PUT
    ]
    transitions = [r.leaderTransitions for r in records]
    assert transitions == sorted(transitions) and transitions[-1] >= 3  # kill, release, take
    print(f"failover: SIGKILL {crash_gap:.3f}s, graceful release {release_gap:.3f}s")


async def test_release_is_taken_over_by_watch_not_poll(pool: ContenderPool) -> None:
    # A long retry period: polling alone would need >= 3 s to notice the release.
    args = [*timings(lease=10, renew=7, retry=3), "--lock", "watchfast", "--release-on-cancel"]
    first = await pool.start("w0", *args)
    await first.wait_for(lambda e: e["event"] == "started")
    second = await pool.start("w1", *args)
    await second.wait_for(lambda e: e["event"] == "new_leader")
    released_at = anyio.current_time()
    first.signal(signal.SIGTERM)
    started = await second.wait_for(lambda e: e["event"] == "started")
    assert started["t"] - released_at < 2.5, "the release was not noticed through the watch"


async def test_paused_leader_is_fenced_after_resume(pool: ContenderPool, store: Store) -> None:
    lock, work = "paused", "/tests/paused/work"
    args = [*timings(), "--lock", lock, "--work-key", work]
    old = await pool.start("p0", *args)
    await old.wait_for(lambda e: e["event"] == "write" and e["ok"])
    new = await pool.start("p1", *args)
    await new.wait_for(lambda e: e["event"] == "new_leader")

    old.signal(signal.SIGSTOP)
    started = await new.wait_for(lambda e: e["event"] == "started", timeout=60)
    await new.wait_for(lambda e: e["event"] == "write" and e["ok"])
    mark = len(old.events)
    old.signal(signal.SIGCONT)
    await old.wait_for(lambda e: e["event"] == "stopped", after=mark)

    # Nothing the old leader wrote after the takeover was accepted by the store.
    late = [
        e
        for e in old.events[mark:]
        if e["event"] == "write" and e["ok"] and e["revision"] > started["token"]
    ]
    assert not late, f"deposed leader's writes accepted: {late}"
    # A write in flight when it was paused may report success late (its revision
    # precedes the takeover); the first one it attempts after that is refused.
    rejected_first = next(
        e
        for e in old.events[mark:]
        if e["event"] == "stopped"
        or (e["event"] == "write" and not (e["ok"] and e["revision"] < started["token"]))
    )
    assert rejected_first["event"] == "stopped" or not rejected_first["ok"]
    await assert_fenced(store.endpoints, lock, work)


async def test_wall_clock_jump_changes_nothing(pool: ContenderPool, store: Store) -> None:
    lock = "skewed"
    ahead = await pool.start("ahead", *timings(), "--lock", lock, "--wall-offset", "3600")
    await ahead.wait_for(lambda e: e["event"] == "started")
    behind = await pool.start("behind", *timings(), "--lock", lock, "--wall-offset", "-3600")
    await behind.wait_for(lambda e: e["event"] == "new_leader")

    # Watch the holder renew for well over two lease durations: the standby,
    # whose clock reads two hours earlier, must not take over.
    async with Client(store.endpoints) as client:
        async with client.watch(record_key("tests", lock)) as watch:
            renewals = 0
            async for batch in watch:
                renewals += len(batch.events)
                if renewals >= int(3 * LEASE / RETRY):
                    break
        record = LeaderElectionRecord.decode(
            (await client.get(record_key("tests", lock))).kvs[0].value
        )
    assert record.holderIdentity == "ahead"
    assert not behind.has("started")

    ahead.signal(signal.SIGKILL)
    await behind.wait_for(lambda e: e["event"] == "started", timeout=LEASE + RETRY + 10)


async def test_store_leader_failover_does_not_cost_the_lock(store3: Store, tmp_path: Path) -> None:
    lock = "storefail"
    async with anyio.create_task_group() as tasks:
        pool = ContenderPool(tasks, store3.endpoints, tmp_path)
        try:
            holder = await pool.start("h0", *timings(lease=10, renew=8, retry=0.5), "--lock", lock)
            await holder.wait_for(lambda e: e["event"] == "started")
            async with Client(store3.endpoints) as client:
                statuses = [await client.status(ep) for ep in store3.endpoints]
                leader_id = statuses[0].leader
                leader_index = next(
                    i for i, s in enumerate(statuses) if s.header.member_id == leader_id
                )
                mark = len(holder.events)
                store3.kill(leader_index)
                # Renewals carry on through the new store leader.
                async with client.watch(record_key("tests", lock)) as watch:
                    renewals = 0
                    with anyio.fail_after(60):
                        async for batch in watch:
                            renewals += len(batch.events)
                            if renewals >= 5:
                                break
            assert not holder.has("stopped", after=mark), "the store failover cost the lock"
        finally:
            await pool.close()
            tasks.cancel_scope.cancel()
