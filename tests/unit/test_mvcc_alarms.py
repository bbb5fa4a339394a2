"""NOSPACE alarms (replicated state that caps writes), quota costs and defragmentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import NoSpaceError
from kvstore.mvcc import open_store
from kvstore.mvcc.store import KV_OVERHEAD, LEASE_OVERHEAD, costs_space, quota_cost
from kvstore.rpc.status import StatusCode
from kvstore.server.status import code_of

ALL = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00")
MEMBER = 0x8E9E05C52164694D


def alarm(action: int, kind: int = rpc_pb2.NOSPACE, member: int = MEMBER) -> rpc_pb2.AlarmRequest:
    return rpc_pb2.AlarmRequest(action=action, memberID=member, alarm=kind)  # type: ignore[arg-type]


def put(key: bytes, value: bytes = b"v") -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(key=key, value=value)


def put_op(key: bytes, value: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=put(key, value))


def test_quota_costs_follow_etcds_estimates() -> None:
    assert quota_cost(put(b"key", b"value")) == KV_OVERHEAD + 3 + 5
    txn = rpc_pb2.TxnRequest(
        success=[put_op(b"a", b"1"), put_op(b"b", b"22")],
        failure=[put_op(b"c", b"x" * 400)],
    )
    assert quota_cost(txn) == KV_OVERHEAD + 1 + 400  # the costlier branch
    assert quota_cost(rpc_pb2.LeaseGrantRequest(TTL=5)) == LEASE_OVERHEAD
    assert not costs_space(rpc_pb2.DeleteRangeRequest(key=b"a"))
    assert not costs_space(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=ALL)]))


def test_nospace_alarm_caps_writes_until_disarmed(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")[0]
    index = iter(range(1, 1000))
    store.apply(next(index), put(b"a"))

    raised = store.apply(next(index), alarm(rpc_pb2.AlarmRequest.ACTIVATE))
    assert raised is not None
    assert [(a.memberID, a.alarm) for a in raised.alarms] == [(MEMBER, rpc_pb2.NOSPACE)]
    for refused in (
        put(b"b"),
        rpc_pb2.TxnRequest(success=[put_op(b"b", b"1")]),
        rpc_pb2.LeaseGrantRequest(ID=7, TTL=10),
    ):
        with pytest.raises(NoSpaceError) as err:
            store.apply(next(index), refused)
        assert code_of(type(err.value)) == StatusCode.RESOURCE_EXHAUSTED
        assert err.value.message == "etcdserver: mvcc: database space exceeded"
    # What frees space still goes through, and reads work.
    store.apply(next(index), rpc_pb2.DeleteRangeRequest(key=b"a"))
    store.apply(next(index), rpc_pb2.CompactionRequest(revision=store.current_revision))
    assert store.range(ALL).count == 0

    listed = store.apply(next(index), alarm(rpc_pb2.AlarmRequest.GET, rpc_pb2.NONE, 0))
    assert listed is not None and len(listed.alarms) == 1
    gone = store.apply(next(index), alarm(rpc_pb2.AlarmRequest.DEACTIVATE))
    assert gone is not None and len(gone.alarms) == 1
    store.apply(next(index), put(b"b"))
    assert store.range(ALL).count == 1


def test_alarms_survive_reopen_and_snapshot(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")[0]
    store.apply(1, alarm(rpc_pb2.AlarmRequest.ACTIVATE))
    store.apply(2, alarm(rpc_pb2.AlarmRequest.ACTIVATE, member=7))
    store.commit()
    snap = store.snapshot(tmp_path / "snap")
    store.close()

    reopened = open_store(tmp_path / "db")[0]
    assert reopened.space_exhausted()
    assert [a.memberID for a in reopened.alarm_members()] == [7, MEMBER]
    with pytest.raises(NoSpaceError):
        reopened.apply(3, put(b"x"))
    reopened.close()

    other = open_store(tmp_path / "other")[0]
    assert not other.space_exhausted()
    other.restore(snap)
    assert len(other.alarm_members(rpc_pb2.NOSPACE)) == 2
    other.close()


def test_deactivating_one_members_alarm_keeps_the_other(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")[0]
    store.apply(1, alarm(rpc_pb2.AlarmRequest.ACTIVATE))
    store.apply(2, alarm(rpc_pb2.AlarmRequest.ACTIVATE, member=7))
    store.apply(3, alarm(rpc_pb2.AlarmRequest.DEACTIVATE))
    assert store.space_exhausted()
    nothing = store.apply(4, alarm(rpc_pb2.AlarmRequest.DEACTIVATE))  # already gone
    assert nothing is not None and len(nothing.alarms) == 0
    store.apply(5, alarm(rpc_pb2.AlarmRequest.DEACTIVATE, member=7))
    assert not store.space_exhausted()


def test_defragment_shrinks_the_backend_and_keeps_the_data(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db", compact_batch=100_000)[0]  # one commit finishes it
    big = b"x" * 4096
    index = 0
    for i in range(400):
        index += 1
        store.apply(index, put(b"k%03d" % i, big))
    store.commit()
    kept = [put(b"keep%d" % i, b"v%d" % i) for i in range(10)]
    for req in kept:
        index += 1
        store.apply(index, req)
    index += 1
    store.apply(index, rpc_pb2.DeleteRangeRequest(key=b"k", range_end=b"l"))
    index += 1
    store.apply(index, rpc_pb2.CompactionRequest(revision=store.current_revision))
    store.commit()
    before = store.db_size()
    rev, ci = store.current_revision, store.consistent_index
    live = store.range(ALL)

    store.defragment()

    assert store.db_size() < before / 4, (before, store.db_size())
    assert store.range(ALL) == live
    assert (store.current_revision, store.consistent_index) == (rev, ci)
    store.close()
    reopened = open_store(tmp_path / "db")[0]
    assert reopened.range(ALL) == live
    assert reopened.consistent_index == ci
