"""The applied membership: etcd's validation of changes, replay after restart, encoding."""

from __future__ import annotations

import hashlib
import struct

import pytest

from kvstore.errors import (
    MemberExistError,
    MemberNotFoundError,
    MemberNotLearnerError,
    PeerURLExistError,
    RequestError,
    TooManyLearnersError,
)
from kvstore.rpc.status import StatusCode
from kvstore.server.membership import (
    Member,
    MemberRegistry,
    new_member_id,
)
from kvstore.server.status import to_status


def three() -> MemberRegistry:
    return MemberRegistry(
        [Member(i, f"m{i}", (f"http://127.0.0.1:{2380 + i}",)) for i in (1, 2, 3)]
    )


def test_add_checks_follow_etcd() -> None:
    reg = three()
    with pytest.raises(MemberExistError):
        reg.check_add(Member(2, "", ("http://127.0.0.1:9999",)))
    with pytest.raises(PeerURLExistError):
        reg.check_add(Member(9, "", ("http://127.0.0.1:2381",)))
    reg.check_add(Member(9, "", ("http://127.0.0.1:9999",), is_learner=True))
    reg.apply({"op": "add", "id": 9, "peer_urls": ["http://127.0.0.1:9999"], "learner": True})
    with pytest.raises(TooManyLearnersError):
        reg.check_add(Member(10, "", ("http://127.0.0.1:9998",), is_learner=True))
    reg.check_add(Member(10, "", ("http://127.0.0.1:9998",)))  # a voter is fine


def test_remove_update_promote_checks() -> None:
    reg = three()
    with pytest.raises(MemberNotFoundError):
        reg.check_remove(42)
    with pytest.raises(MemberNotLearnerError):
        reg.check_promote(1)
    with pytest.raises(MemberNotFoundError):
        reg.check_promote(42)
    with pytest.raises(PeerURLExistError):
        reg.check_update(1, ("http://127.0.0.1:2382",))
    reg.check_update(1, ("http://127.0.0.1:2381",))  # its own URL is not a conflict
    reg.check_update(1, ("http://127.0.0.1:7000",))
    reg.apply({"op": "remove", "id": 3})
    # A removed ID is gone for good: etcd answers "member not found" for it.
    with pytest.raises(MemberNotFoundError):
        reg.check_add(Member(3, "", ("http://127.0.0.1:7001",)))
    with pytest.raises(MemberNotFoundError):
        reg.check_remove(3)


def test_errors_carry_etcds_status() -> None:
    precondition = StatusCode.FAILED_PRECONDITION
    cases: list[tuple[RequestError, StatusCode, str]] = [
        (MemberNotFoundError(), StatusCode.NOT_FOUND, "etcdserver: member not found"),
        (PeerURLExistError(), precondition, "etcdserver: Peer URLs already exists"),
        (MemberExistError(), precondition, "etcdserver: member ID already exist"),
    ]
    for err, code, message in cases:
        assert to_status(err) == (code, message)


CHANGES = [
    {"op": "add", "id": 9, "peer_urls": ["http://127.0.0.1:9999"], "learner": True},
    {"op": "promote", "id": 9},
    {"op": "update", "id": 1, "peer_urls": ["http://127.0.0.1:7000"]},
    {"op": "remove", "id": 2},
    {"op": "add", "id": 10, "peer_urls": ["http://127.0.0.1:2382"], "learner": False},
    {"op": "remove", "id": 10},
]


@pytest.mark.parametrize("replayed_from", range(len(CHANGES) + 1))
def test_replaying_a_suffix_on_the_final_state_changes_nothing(replayed_from: int) -> None:
    """After a restart the WAL may replay changes the stored membership already holds."""
    final = three()
    for change in CHANGES:
        final.apply(change)
    replayed = MemberRegistry.decode(final.encode())
    for change in CHANGES[replayed_from:]:
        replayed.apply(change)
    assert replayed.sorted() == final.sorted()
    assert replayed.removed == final.removed == {2, 10}
    assert [m.id for m in final.sorted()] == [1, 3, 9]
    assert final.members[1].peer_urls == ("http://127.0.0.1:7000",)
    assert not final.members[9].is_learner


def test_encoding_round_trip() -> None:
    reg = three()
    reg.apply(CHANGES[0])
    reg.index = 77
    back = MemberRegistry.decode(reg.encode())
    assert (back.sorted(), back.removed, back.index) == (reg.sorted(), reg.removed, 77)


def test_new_member_id_is_etcds() -> None:
    """sha1 of the sorted peer URLs and the unix time, first 8 bytes big endian."""
    urls = ["http://b:2380", "http://a:2380"]
    digest = hashlib.sha1(b"http://a:2380http://b:23801700000000").digest()
    assert new_member_id(urls, 1_700_000_000) == struct.unpack(">Q", digest[:8])[0]
    assert new_member_id(urls, 1_700_000_001) != new_member_id(urls, 1_700_000_000)
