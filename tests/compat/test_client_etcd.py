"""The client against a real etcd: every call, every field it returns."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import (
    Client,
    CompactedError,
    FutureRevisionError,
    InvalidRequestError,
    KeyNotFoundError,
    LeaseNotFoundError,
    txn,
)
from kvstore.local.etcd import EtcdCluster

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[Client]:
    async with Client(etcd.endpoints, default_timeout=10) as c:
        yield c


@pytest.fixture
def p() -> str:
    """A key prefix of this test's own: the etcd is shared by the session."""
    return f"/test/{uuid.uuid4().hex[:12]}/"


async def test_put_get_fields(client: Client, p: str) -> None:
    first = await client.put(p + "a", "1")
    rev = first.header.revision
    assert rev > 0 and first.header.cluster_id != 0 and first.header.member_id != 0
    assert not first.HasField("prev_kv")

    second = await client.put(p + "a", "2", prev_kv=True)
    assert second.header.revision == rev + 1
    assert second.prev_kv.value == b"1"
    assert (second.prev_kv.create_revision, second.prev_kv.mod_revision) == (rev, rev)
    assert second.prev_kv.version == 1

    got = await client.get(p + "a")
    assert got.count == 1 and not got.more
    kv = got.kvs[0]
    assert (kv.key, kv.value) == ((p + "a").encode(), b"2")
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (rev, rev + 1, 2, 0)

    old = await client.get(p + "a", revision=rev)
    assert old.kvs[0].value == b"1" and old.kvs[0].version == 1

    missing = await client.get(p + "nothing")
    assert missing.count == 0 and len(missing.kvs) == 0


async def test_put_ignore_value_and_lease(client: Client, p: str) -> None:
    lease = await client.grant(60)
    await client.put(p + "k", "v", lease=lease.ID)
    await client.put(p + "k", "", ignore_value=True)  # keeps value; drops the lease
    kv = (await client.get(p + "k")).kvs[0]
    assert (kv.value, kv.version, kv.lease) == (b"v", 2, 0)

    await client.put(p + "k", "v3", lease=lease.ID)
    await client.put(p + "k", "v4", ignore_lease=True)
    kv = (await client.get(p + "k")).kvs[0]
    assert (kv.value, kv.lease) == (b"v4", lease.ID)

    with pytest.raises(KeyNotFoundError, match="etcdserver: key not found"):
        await client.put(p + "absent", "", ignore_value=True)
    with pytest.raises(InvalidRequestError, match="etcdserver: value is provided"):
        await client.put(p + "k", "x", ignore_value=True)
    with pytest.raises(LeaseNotFoundError, match="etcdserver: requested lease not found"):
        await client.put(p + "k", "x", lease=0x7EADBEEF)
    await client.revoke(lease.ID)


async def test_range_options(client: Client, p: str) -> None:
    revs = {}
    for name, value in [("c", "3"), ("a", "1"), ("b", "22"), ("d", "0")]:
        revs[name] = (await client.put(p + name, value)).header.revision
    await client.put(p + "b", "2")  # b: version 2, newest mod revision

    def keys(resp: pb.RangeResponse) -> list[str]:
        return [kv.key.decode()[len(p) :] for kv in resp.kvs]

    whole = await client.get(p, prefix=True)
    assert keys(whole) == ["a", "b", "c", "d"] and whole.count == 4 and not whole.more

    limited = await client.get(p, prefix=True, limit=2)
    assert keys(limited) == ["a", "b"] and limited.more and limited.count == 4

    assert keys(await client.get(p + "b", p + "d")) == ["b", "c"]
    assert keys(await client.get(p + "c", from_key=True, limit=2)) == ["c", "d"]

    desc = await client.get(p, prefix=True, sort_order=pb.RangeRequest.DESCEND)
    assert keys(desc) == ["d", "c", "b", "a"]
    by_value = await client.get(
        p, prefix=True, sort_target=pb.RangeRequest.VALUE, sort_order=pb.RangeRequest.ASCEND
    )
    assert keys(by_value) == ["d", "a", "b", "c"]
    by_version = await client.get(
        p, prefix=True, sort_target=pb.RangeRequest.VERSION, sort_order=pb.RangeRequest.DESCEND
    )
    assert keys(by_version)[0] == "b"
    by_create = await client.get(
        p, prefix=True, sort_target=pb.RangeRequest.CREATE, sort_order=pb.RangeRequest.ASCEND
    )
    assert keys(by_create) == ["c", "a", "b", "d"]
    by_mod = await client.get(
        p, prefix=True, sort_target=pb.RangeRequest.MOD, sort_order=pb.RangeRequest.DESCEND
    )
    assert keys(by_mod) == ["b", "d", "a", "c"]

    only_keys = await client.get(p, prefix=True, keys_only=True)
    assert keys(only_keys) == ["a", "b", "c", "d"]
    assert all(kv.value == b"" for kv in only_keys.kvs)
    assert all(kv.mod_revision > 0 for kv in only_keys.kvs)

    counted = await client.get(p, prefix=True, count_only=True)
    assert counted.count == 4 and len(counted.kvs) == 0

    newer = await client.get(p, prefix=True, min_mod_revision=revs["b"] + 1)
    assert keys(newer) == ["b", "d"]
    older = await client.get(p, prefix=True, max_create_revision=revs["a"])
    assert keys(older) == ["a", "c"]
    window = await client.get(
        p, prefix=True, min_create_revision=revs["a"], max_mod_revision=revs["d"]
    )
    assert keys(window) == ["a", "d"]

    serial = await client.get(p + "a", serializable=True)
    assert serial.kvs[0].value == b"1"

    historic = await client.get(p, prefix=True, revision=revs["b"])
    assert keys(historic) == ["a", "b", "c"]
    assert historic.kvs[1].value == b"22"


async def test_delete(client: Client, p: str) -> None:
    for name in "abc":
        await client.put(p + name, name.upper())
    one = await client.delete(p + "a", prev_kv=True)
    assert one.deleted == 1 and [kv.value for kv in one.prev_kvs] == [b"A"]
    rest = await client.delete(p, prefix=True)
    assert rest.deleted == 2 and len(rest.prev_kvs) == 0
    assert rest.header.revision == one.header.revision + 1
    none = await client.delete(p, prefix=True)
    assert none.deleted == 0 and none.header.revision == rest.header.revision

    recreated = await client.put(p + "a", "again")
    kv = (await client.get(p + "a")).kvs[0]
    assert kv.version == 1 and kv.create_revision == recreated.header.revision


async def test_txn_branches_and_compares(client: Client, p: str) -> None:
    created = (await client.put(p + "k", "v1")).header.revision
    ok = await (
        client.txn()
        .when(
            txn.value(p + "k") == b"v1",
            txn.version(p + "k") == 1,
            txn.create_revision(p + "k") == created,
            txn.mod_revision(p + "k") < created + 1,
            txn.lease(p + "k") == 0,
        )
        .then(txn.put(p + "k", "v2", prev_kv=True), txn.get(p + "k"))
        .otherwise(txn.get(p + "never"))
        .commit()
    )
    assert ok.succeeded
    assert ok.header.revision == created + 1
    put_resp, get_resp = ok.responses
    assert put_resp.response_put.prev_kv.value == b"v1"
    assert get_resp.response_range.kvs[0].value == b"v2"
    assert get_resp.response_range.kvs[0].mod_revision == created + 1

    failed = await (
        client.txn()
        .when(txn.value(p + "k") != b"v2")
        .then(txn.delete(p + "k"))
        .otherwise(txn.get(p + "k"), txn.put(p + "other", "x"))
        .commit()
    )
    assert not failed.succeeded
    assert failed.responses[0].response_range.kvs[0].value == b"v2"
    assert failed.header.revision == created + 2  # the put in the failure branch

    read_only = await client.txn().when(txn.version(p + "k") > 5).commit()
    assert not read_only.succeeded and read_only.header.revision == created + 2

    # A compare over a range: every key in it must match.
    await client.put(p + "r/1", "same")
    await client.put(p + "r/2", "same")
    ranged = await client.txn().when(txn.value(p + "r/", prefix=True) == b"same").commit()
    assert ranged.succeeded
    await client.put(p + "r/3", "different")
    ranged = await client.txn().when(txn.value(p + "r/", prefix=True) == b"same").commit()
    assert not ranged.succeeded

    inner = txn.txn().when(txn.version(p + "k") == 2).then(txn.put(p + "nested", "yes"))
    outer = await client.txn().then(txn.nested(inner), txn.get(p + "k")).commit()
    assert outer.succeeded
    assert outer.responses[0].response_txn.succeeded
    assert (await client.get(p + "nested")).kvs[0].value == b"yes"

    with pytest.raises(InvalidRequestError, match="duplicate key given in txn request"):
        await client.txn().then(txn.put(p + "d", "1"), txn.put(p + "d", "2")).commit()
    with pytest.raises(InvalidRequestError, match="too many operations in txn request"):
        await client.txn().then(*(txn.put(f"{p}many/{i}", "x") for i in range(129))).commit()


async def test_compaction_errors(client: Client, p: str) -> None:
    first = (await client.put(p + "k", "1")).header.revision
    second = (await client.put(p + "k", "2")).header.revision
    await client.compact(second, physical=True)
    with pytest.raises(CompactedError, match="required revision has been compacted"):
        await client.get(p + "k", revision=first)
    assert (await client.get(p + "k", revision=second)).kvs[0].value == b"2"
    with pytest.raises(CompactedError):
        await client.compact(first)
    with pytest.raises(FutureRevisionError, match="required revision is a future revision"):
        await client.get(p + "k", revision=second + 1_000_000)


async def test_watch_events_prev_kv_and_filters(client: Client, p: str) -> None:
    async with (
        client.watch(p, prefix=True, prev_kv=True) as everything,
        client.watch(p, prefix=True, no_put=True) as deletes_only,
        client.watch(p + "a") as just_a,
    ):
        assert len({everything.watch_id, deletes_only.watch_id, just_a.watch_id}) == 3
        r1 = (await client.put(p + "a", "1")).header.revision
        await client.put(p + "b", "2")
        await client.put(p + "a", "3")
        r4 = (await client.delete(p + "a")).header.revision

        got = []
        async for batch in everything:
            got.extend(batch.events)
            if len(got) == 4:
                break
        assert [(e.type, e.kv.key[len(p) :], e.kv.value) for e in got] == [
            (PUT, b"a", b"1"),
            (PUT, b"b", b"2"),
            (PUT, b"a", b"3"),
            (DELETE, b"a", b""),
        ]
        assert [e.kv.mod_revision for e in got] == [r1, r1 + 1, r1 + 2, r4]
        assert not got[0].HasField("prev_kv")
        assert got[2].prev_kv.value == b"1" and got[3].prev_kv.value == b"3"

        batch = await anext(aiter(deletes_only))
        assert [(e.type, e.kv.mod_revision) for e in batch.events] == [(DELETE, r4)]

        seen_a: list[int] = []
        async for batch in just_a:
            seen_a.extend(e.kv.mod_revision for e in batch.events)
            if len(seen_a) == 3:
                break
        assert seen_a == [r1, r1 + 2, r4]


async def test_watch_txn_events_share_a_batch(client: Client, p: str) -> None:
    async with client.watch(p, prefix=True) as w:
        resp = await client.txn().then(txn.put(p + "x", "1"), txn.put(p + "y", "2")).commit()
        batch = await anext(aiter(w))
        assert [e.kv.key[len(p) :] for e in batch.events] == [b"x", b"y"]
        assert {e.kv.mod_revision for e in batch.events} == {resp.header.revision}


async def test_watch_from_past_revision_and_compacted(client: Client, p: str) -> None:
    r1 = (await client.put(p + "k", "1")).header.revision
    r2 = (await client.put(p + "k", "2")).header.revision
    r3 = (await client.put(p + "k", "3")).header.revision

    async with client.watch(p + "k", start_revision=r2) as w:
        batch = await anext(aiter(w))
        assert [e.kv.mod_revision for e in batch.events] == [r2, r3]

    await client.compact(r3)
    async with client.watch(p + "k", start_revision=r1) as w:
        with pytest.raises(CompactedError) as info:
            await anext(aiter(w))
        assert info.value.compact_revision >= r3


async def test_watch_progress_notification(client: Client, p: str) -> None:
    async with client.watch(p + "quiet") as w:
        current = (await client.put(p + "elsewhere", "x")).header.revision
        await client.request_progress()
        batch = await anext(aiter(w))
        assert batch.is_progress_notify and batch.revision >= current


async def test_lease_lifecycle(client: Client, p: str) -> None:
    lease = await client.grant(30)
    assert lease.ID != 0 and lease.TTL == 30
    await client.put(p + "a", "1", lease=lease.ID)
    await client.put(p + "b", "2", lease=lease.ID)

    ttl = await client.time_to_live(lease.ID, keys=True)
    assert ttl.ID == lease.ID and ttl.grantedTTL == 30 and 0 < ttl.TTL <= 30
    assert sorted(ttl.keys) == [(p + "a").encode(), (p + "b").encode()]
    assert lease.ID in await client.leases()
    assert await client.keepalive_once(lease.ID) == 30

    chosen = await client.grant(20, lease_id=0x1234ABCD)
    assert chosen.ID == 0x1234ABCD

    await client.revoke(lease.ID)
    assert (await client.get(p, prefix=True)).count == 0
    gone = await client.time_to_live(lease.ID)
    assert gone.TTL == -1
    with pytest.raises(LeaseNotFoundError):
        await client.revoke(lease.ID)
    with pytest.raises(LeaseNotFoundError):
        await client.keepalive_once(lease.ID)
    await client.revoke(chosen.ID)


async def test_lease_expiry_deletes_keys(client: Client, p: str) -> None:
    lease = await client.grant(1)
    put = await client.put(p + "ephemeral", "x", lease=lease.ID)
    async with client.watch(p + "ephemeral", start_revision=put.header.revision + 1) as w:
        # etcd expires leases on its own schedule; the delete event is what we await.
        with anyio.fail_after(15):
            batch = await anext(aiter(w))
    assert [e.type for e in batch.events] == [DELETE]
    assert (await client.time_to_live(lease.ID)).TTL == -1


async def test_keepalive_holds_a_lease_past_its_ttl(client: Client, p: str) -> None:
    # A TTL that a loaded machine's scheduling hiccups cannot eat (renewals every TTL/3).
    lease = await client.grant(4)
    await client.put(p + "held", "x", lease=lease.ID)
    async with client.keepalive(lease.ID) as ka, client.watch(p + "held") as w:
        # Wait well past the TTL: a progress round trip proves time passed with no delete.
        start = anyio.current_time()
        renewed_deadlines = {ka.deadline}
        while anyio.current_time() - start < 7:
            await client.request_progress()
            batch = await anext(aiter(w))
            assert batch.is_progress_notify, "the kept-alive key must not be deleted"
            renewed_deadlines.add(ka.deadline)
            await anyio.sleep(0.5)  # pacing of the probe loop, not synchronisation
        assert len(renewed_deadlines) > 1 and not ka.lost.is_set()
    assert (await client.get(p + "held")).count == 1
    await client.revoke(lease.ID)


async def test_keepalive_reports_a_revoked_lease(client: Client) -> None:
    lease = await client.grant(3)
    async with client.keepalive(lease.ID) as ka:
        await client.revoke(lease.ID)
        with anyio.fail_after(10):
            await ka.lost.wait()


async def test_member_list_and_status(client: Client, etcd: EtcdCluster) -> None:
    members = await client.member_list()
    assert len(members.members) == 1
    member = members.members[0]
    assert member.name == "etcd0" and member.clientURLs == [etcd.members[0].client_url]
    status = await client.status(etcd.endpoints[0])
    assert status.version.startswith("3.5")
    assert status.leader == member.ID and status.header.member_id == member.ID
    assert status.raftIndex >= status.raftAppliedIndex > 0 and status.dbSize > 0
    hashed = await client.hash_kv(etcd.endpoints[0])
    assert hashed.header.revision > 0


async def test_watches_cancelled_while_opening_leave_the_shared_stream_working(
    etcd: EtcdCluster, p: str
) -> None:
    """Openers cancelled at every point of opening a watch (the create request in flight
    included) must not end the client's shared watch stream, nor cancel the client's owner,
    nor leave a watch nobody reads that fills up and stalls the stream."""
    outcome: list[str] = []

    async def open_and_hold(client: Client, key: str) -> None:
        async with client.watch(key, prefix=True):
            await anyio.sleep_forever()

    async def scenario() -> None:
        async with (
            Client(etcd.endpoints, default_timeout=10) as client,
            client.watch(p + "survivor") as survivor,
        ):
            for steps in range(40):  # cancelled after 0, 1, ... turns of the event loop
                async with anyio.create_task_group() as openers:
                    openers.start_soon(open_and_hold, client, p + "abandoned/")
                    for _ in range(steps):
                        await anyio.lowlevel.checkpoint()
                    openers.cancel_scope.cancel()
            # More events than a watch may buffer (1024 batches), under the prefix of the
            # abandoned watches: one left registered but unread would stall every watch.
            for n in range(1100):
                await client.put(f"{p}abandoned/{n % 7}", str(n))
            put = await client.put(p + "survivor", "still here")
            with anyio.fail_after(30):
                batch = await anext(aiter(survivor))
            assert [e.kv.mod_revision for e in batch.events] == [put.header.revision]
            outcome.append("delivered")

    # In a task of its own: a client cancelled from inside would cancel this test's task.
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(scenario)
    assert outcome == ["delivered"]
