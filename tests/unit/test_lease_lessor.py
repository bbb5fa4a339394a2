"""Lessor: grant/revoke/renew/expiry/checkpoint/promote with an injected clock; and the
store's lease integration (revoke deletes keys in one revision, persistence, TTL queries)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.mvccpb import kv_pb2
from kvstore.errors import (
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NotPrimaryError,
)
from kvstore.lease import MAX_LEASE_TTL, Lessor
from kvstore.lease.lessor import LeaseExpiringError
from kvstore.mvcc import MVCCStore, WatchHub, open_store
from kvstore.rpc.status import StatusCode
from kvstore.server.status import code_of


def hub_of(store: MVCCStore) -> WatchHub:
    """The watch hub ``open_store`` attached to ``store``."""
    assert isinstance(store.watchers, WatchHub)
    return store.watchers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_grant_errors_and_min_ttl() -> None:
    lessor = Lessor(Clock(), min_ttl=2)
    assert lessor.grant(1, 1).ttl == 2  # raised to the minimum
    with pytest.raises(LeaseExistsError) as e:
        lessor.grant(1, 10)
    assert code_of(type(e.value)) == StatusCode.FAILED_PRECONDITION
    assert e.value.message == "etcdserver: lease already exists"
    with pytest.raises(LeaseTTLTooLargeError) as e2:
        lessor.grant(2, MAX_LEASE_TTL + 1)
    assert e2.value.message == "etcdserver: too large lease TTL"
    assert lessor.grant(3, MAX_LEASE_TTL).ttl == MAX_LEASE_TTL
    with pytest.raises(LeaseNotFoundError) as e3:
        lessor.revoke(99)
    assert code_of(type(e3.value)) == StatusCode.NOT_FOUND
    assert e3.value.message == "etcdserver: requested lease not found"


def test_only_primary_expires_and_renews() -> None:
    clock = Clock()
    lessor = Lessor(clock)
    lessor.grant(1, 10)
    clock.now += 100
    assert lessor.expired() == []  # a follower never expires leases
    with pytest.raises(NotPrimaryError):
        lessor.renew(1)
    lessor.promote(extend=0.0)
    clock.now += 9.5
    assert lessor.expired() == []
    assert lessor.remaining_ttl(1) == 0  # 0.5 s left, truncated like etcd
    assert lessor.renew(1) == 10
    clock.now += 9.9
    assert lessor.expired() == []
    clock.now += 0.2
    assert lessor.expired() == [1]
    assert lessor.expired() == []  # reported once, retried only after a while
    clock.now += 3.1
    assert lessor.expired() == [1]  # revoke not applied yet: report again
    with pytest.raises(LeaseExpiringError):
        lessor.renew(1)  # an expired lease cannot be renewed; its revoke is on its way
    lessor.revoke(1)
    with pytest.raises(LeaseNotFoundError):
        lessor.renew(1)
    clock.now += 10
    assert lessor.expired() == []


def test_an_expired_lease_awaiting_its_revoke_reports_ttl_zero_not_minus_one(
    tmp_path: Path,
) -> None:
    """TTL -1 means "no such lease"; until the revoke is applied the lease and its keys
    still exist, so the leader must not say -1 (nor -2, ...) however late the revoke is."""
    clock = Clock()
    store = open_store(tmp_path / "s", clock=clock)[0]
    store.lessor.promote(extend=0.0)
    store.apply(1, rpc_pb2.LeaseGrantRequest(ID=7, TTL=2))
    _put(store, 2, b"k", 7)
    for late in (1.5, 2.5, 30.0):  # the revoke waits for a leader and a quorum
        clock.now = 1002.0 + late
        assert store.lessor.expired() in ([7], [])
        assert store.lease_time_to_live(rpc_pb2.LeaseTimeToLiveRequest(ID=7)).TTL == 0
        assert store.lessor.remaining_ttl(7) == 0
    store.execute(rpc_pb2.LeaseRevokeRequest(ID=7))
    assert store.lease_time_to_live(rpc_pb2.LeaseTimeToLiveRequest(ID=7)).TTL == -1
    store.close()


def test_promote_extends_so_nothing_expires_early() -> None:
    clock = Clock()
    lessor = Lessor(clock)
    for i in range(1, 4):
        lessor.grant(i, 5)
    clock.now += 1000  # long follower period
    lessor.promote(extend=1.0)
    clock.now += 5.5
    assert lessor.expired() == []
    clock.now += 0.6
    assert sorted(lessor.expired()) == [1, 2, 3]
    lessor.demote()
    clock.now += 100
    assert lessor.expired() == []


def test_checkpoint_keeps_ttl_honest_across_leader_change() -> None:
    clock = Clock()
    lessor = Lessor(clock, checkpoint_interval=60)
    lessor.promote(0.0)
    lessor.grant(1, 300)
    clock.now += 61
    cps = lessor.due_checkpoints()
    assert cps == [(1, 239)]
    # The checkpoint goes through Raft and is applied on every member (here: a new leader).
    follower = Lessor(clock, checkpoint_interval=60)
    follower.grant(1, 300)
    for lease_id, remaining in cps:
        follower.checkpoint(lease_id, remaining)
    follower.promote(extend=2.0)
    assert follower.remaining_ttl(1) == 241  # 239 + extend, not a fresh 300
    # A keepalive clears the checkpoint: it is proposed as a checkpoint of 0.
    assert follower.renew(1) == 300
    assert follower.due_checkpoints() == [(1, 0)]


def test_attach_detach() -> None:
    lessor = Lessor(Clock())
    lessor.grant(1, 10)
    lessor.attach(1, b"a")
    lessor.attach(1, b"b")
    assert lessor.lease_of(b"a") == 1
    lessor.detach(1, b"a")
    assert lessor.keys_of(1) == [b"b"]
    assert lessor.revoke(1) == [b"b"]
    assert lessor.lease_of(b"b") == 0


def _put(store: MVCCStore, idx: int, key: bytes, lease: int) -> None:
    store.apply(idx, rpc_pb2.PutRequest(key=key, value=b"v", lease=lease))


def test_store_revoke_deletes_keys_in_one_revision(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path / "s", clock=clock)[0]
    store.apply(1, rpc_pb2.LeaseGrantRequest(ID=7, TTL=30))
    store.apply(2, rpc_pb2.LeaseGrantRequest(ID=8, TTL=30))
    _put(store, 3, b"c", 7)
    _put(store, 4, b"a", 7)
    _put(store, 5, b"b", 8)
    _put(store, 6, b"b", 7)  # re-put with another lease: moves from 8 to 7
    stream = hub_of(store).new_stream()
    stream.watch(rpc_pb2.WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
    stream.drain()
    resp = store.execute(rpc_pb2.LeaseRevokeRequest(ID=7))
    assert resp.header.revision == 6
    (w,) = stream.drain()
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in w.events] == [
        (kv_pb2.Event.DELETE, k, 6) for k in (b"a", b"b", b"c")
    ]
    ttl = store.lease_time_to_live(rpc_pb2.LeaseTimeToLiveRequest(ID=8, keys=True))
    assert (ttl.TTL, ttl.grantedTTL, list(ttl.keys)) == (30, 30, [])
    assert store.lease_time_to_live(rpc_pb2.LeaseTimeToLiveRequest(ID=7)).TTL == -1
    with pytest.raises(LeaseNotFoundError):
        store.apply(8, rpc_pb2.LeaseRevokeRequest(ID=7))
    with pytest.raises(LeaseNotFoundError):
        _put(store, 9, b"x", 7)
    store.close()


def test_store_leases_persist_with_checkpoints(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path / "s", clock=clock)[0]
    store.apply(1, rpc_pb2.LeaseGrantRequest(ID=7, TTL=600))
    store.apply(2, rpc_pb2.LeaseGrantRequest(ID=9, TTL=600))
    _put(store, 3, b"k", 7)
    _put(store, 4, b"j", 9)
    store.apply(
        5,
        rpc_pb2.LeaseCheckpointRequest(
            checkpoints=[rpc_pb2.LeaseCheckpoint(ID=7, remaining_TTL=120)]
        ),
    )
    store.apply(6, rpc_pb2.LeaseRevokeRequest(ID=9))
    store.commit()
    store.close()
    store = open_store(tmp_path / "s", clock=clock)[0]
    assert [lease.id for lease in store.lessor.leases()] == [7]
    assert store.lessor.keys_of(7) == [b"k"]
    store.lessor.promote(extend=1.0)
    assert store.lessor.remaining_ttl(7) == 121
    assert list(store.lease_leases().leases) == [rpc_pb2.LeaseStatus(ID=7)]
    clock.now += 122
    assert store.lessor.expired() == [7]
    store.close()


def test_checkpoints_are_not_duplicated_by_renewals() -> None:
    clock = Clock()
    lessor = Lessor(clock, checkpoint_interval=60)
    lessor.promote(0.0)
    lessor.grant(1, 300)
    for _ in range(5):
        clock.now += 10
        lessor.renew(1)
    clock.now += 61
    assert lessor.due_checkpoints() == [(1, 239)]
    assert lessor.due_checkpoints() == []
