"""Our store in etcd's backend layout and back: every bucket's encoding, and the round trip."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.leasepb import lease_pb2
from kvstore.mvcc import backend as bk
from kvstore.mvcc import open_store
from kvstore.mvcc.revision import rev_key
from kvstore.mvcc.store import MVCCStore
from kvstore.server.backup import write_etcd_backup
from kvstore.server.etcd_format import BUCKETS, import_etcd_backend
from kvstore.server.membership import MEMBERS_RECORD, Member, MemberRegistry
from kvstore.storage.bbolt import BoltReader

ALL = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00")


def fill(store: MVCCStore) -> None:
    registry = MemberRegistry(
        [
            Member(0x2F87CB4716B4F167, "etcd1", ("http://127.0.0.1:20822",)),
            Member(0x9C, "", ("http://127.0.0.1:20830",), is_learner=True),
            Member(7, "kv&<x>", ("http://p:1",), ("http://c:1", "http://c:2")),
        ],
        removed={0x10},
    )
    store.save_record(MEMBERS_RECORD, registry.encode())
    store.execute(rpc_pb2.LeaseGrantRequest(ID=0x394EA2, TTL=600))
    store.execute(rpc_pb2.PutRequest(key=b"a", value=b"1"))
    store.execute(rpc_pb2.PutRequest(key=b"b", value=b"2", lease=0x394EA2))
    store.execute(rpc_pb2.DeleteRangeRequest(key=b"a"))
    store.execute(rpc_pb2.CompactionRequest(revision=3))
    store.execute(
        rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=7, alarm=rpc_pb2.NOSPACE
        )
    )
    store.execute(
        rpc_pb2.LeaseCheckpointRequest(
            checkpoints=[rpc_pb2.LeaseCheckpoint(ID=0x394EA2, remaining_TTL=500)]
        )
    )


def test_every_bucket_as_etcd_writes_it(tmp_path: Path) -> None:
    store, _ = open_store(tmp_path / "src")
    try:
        fill(store)
        path = write_etcd_backup(
            store.open_view(), tmp_path / "db", term=9, cluster_version="3.5.0"
        )
    finally:
        store.close()
    with BoltReader(path) as reader:
        reader.check()
        got = {name: dict(reader.items(name)) for name, _ in reader.buckets()}
    assert tuple(got) == BUCKETS
    assert got[b"members"] == {
        # etcd's JSON, byte for byte: no name or clientURLs when empty, Go's escapes.
        b"2f87cb4716b4f167": b'{"id":3424929547822625127,"peerURLs":["http://127.0.0.1:20822"],'
        b'"name":"etcd1"}',
        b"9c": b'{"id":156,"peerURLs":["http://127.0.0.1:20830"],"isLearner":true}',
        b"7": b'{"id":7,"peerURLs":["http://p:1"],"name":"kv\\u0026\\u003cx\\u003e",'
        b'"clientURLs":["http://c:1","http://c:2"]}',
    }
    assert got[b"members_removed"] == {b"10": b"removed"}
    meta = got[b"meta"]
    assert json.loads(meta[b"confState"]) == {
        "voters": [7, 0x2F87CB4716B4F167],
        "learners": [0x9C],
        "auto_leave": False,
    }
    assert meta[b"term"] == struct.pack(">Q", 9)
    assert meta[b"scheduledCompactRev"] == meta[b"finishedCompactRev"] == rev_key(3, 0)
    assert MEMBERS_RECORD not in meta  # it became the members buckets
    assert got[b"lease"] == {
        struct.pack(">Q", 0x394EA2): lease_pb2.Lease(
            ID=0x394EA2, TTL=600, RemainingTTL=500
        ).SerializeToString()
    }
    assert got[b"alarm"] == {
        rpc_pb2.AlarmMember(memberID=7, alarm=rpc_pb2.NOSPACE).SerializeToString(): b""
    }
    assert got[b"auth"] == {b"authRevision": struct.pack(">Q", 1)}  # auth never enabled
    assert got[b"authUsers"] == got[b"authRoles"] == {}
    assert got[b"cluster"] == {b"clusterVersion": b"3.5.0"}
    # A tombstone is KeyValue{key} alone, as etcd stores it.
    assert got[b"key"][rev_key(4, 0, tombstone=True)] == b"\n\x01a"


def test_round_trip_through_etcds_layout(tmp_path: Path) -> None:
    src, _ = open_store(tmp_path / "src")
    try:
        fill(src)
        before = (
            src.range(ALL),
            src.current_revision,
            src.compact_revision,
            src.alarms,
            src.hash_kv(),
            [(lease.id, lease.ttl, lease.remaining_ttl) for lease in src.lessor.leases()],
            src.load_record(MEMBERS_RECORD),
        )
        path = write_etcd_backup(src.open_view(), tmp_path / "db", term=9, cluster_version="3.5.0")
    finally:
        src.close()
    backend = bk.Backend(tmp_path / "dst")
    with BoltReader(path) as reader:
        summary = import_etcd_backend(reader, backend)
    backend.close()
    assert (summary.leases, summary.members) == (1, 3)
    dst, _ = open_store(tmp_path / "dst")
    try:
        record = dst.load_record(MEMBERS_RECORD)
        assert record is not None and before[6] is not None
        # The membership comes back whole; only the Raft index it was last changed at does not.
        assert MemberRegistry.decode(record).sorted() == MemberRegistry.decode(before[6]).sorted()
        assert MemberRegistry.decode(record).removed == {0x10}
        after = (
            dst.range(ALL),
            dst.current_revision,
            dst.compact_revision,
            dst.alarms,
            dst.hash_kv(),
            [(lease.id, lease.ttl, lease.remaining_ttl) for lease in dst.lessor.leases()],
        )
        assert after == before[:6]
    finally:
        dst.close()
