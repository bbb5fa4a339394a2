"""ConfChange codec and the membership changer (etcd confchange semantics)."""

from __future__ import annotations

import pytest

from kvstore.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    decode_conf_change,
    encode_conf_change,
)
from kvstore.raft.confchange import Membership, apply_change

ADD, REMOVE, LEARNER = (
    ConfChangeType.ADD_NODE,
    ConfChangeType.REMOVE_NODE,
    ConfChangeType.ADD_LEARNER_NODE,
)


def cc(*changes: tuple[ConfChangeType, int], t: int = 0) -> ConfChange:
    return ConfChange(tuple(ConfChangeSingle(k, i) for k, i in changes), ConfChangeTransition(t))


def m(voters: tuple[int, ...], learners: tuple[int, ...] = ()) -> Membership:
    return Membership.from_conf_state(ConfState(voters=voters, learners=learners))


@pytest.mark.parametrize(
    "change",
    [
        ConfChange(),
        cc((ADD, 4)),
        cc((ADD, 4), (REMOVE, 1), t=2),
        ConfChange(
            (ConfChangeSingle(LEARNER, 2**63),), ConfChangeTransition.JOINT_IMPLICIT, b"ctx\x00"
        ),
    ],
)
def test_codec_roundtrip(change: ConfChange) -> None:
    assert decode_conf_change(encode_conf_change(change)) == change


@pytest.mark.parametrize("blob", [b"", b"\x00\x01\x00\x00\x00", b"\xcc\x01\x00\x00\x02\x00"])
def test_codec_rejects_garbage(blob: bytes) -> None:
    with pytest.raises(ConfChangeError):
        decode_conf_change(blob)


def test_simple_add_and_remove() -> None:
    out = apply_change(m((1, 2, 3)), cc((ADD, 4)))
    assert out.voters == {1, 2, 3, 4} and not out.joint
    out = apply_change(out, cc((REMOVE, 2)))
    assert out.voters == {1, 3, 4}


def test_auto_with_two_changes_goes_joint_but_one_change_stays_simple() -> None:
    assert cc((ADD, 4), (REMOVE, 1)).enters_joint() == (True, True)
    assert cc((ADD, 4)).enters_joint() == (False, False)
    assert cc((ADD, 4), t=2).enters_joint() == (True, False)


def test_learner_promotion_and_removal_of_all_voters() -> None:
    out = apply_change(m((1, 2, 3)), cc((LEARNER, 4)))
    assert out.learners == {4}
    out = apply_change(out, cc((ADD, 4)))
    assert out.voters == {1, 2, 3, 4} and not out.learners
    with pytest.raises(ConfChangeError, match="removed all voters"):
        apply_change(m((1,)), cc((REMOVE, 1)))


def test_joint_swap_and_auto_leave() -> None:
    start = m((1, 2, 3), (4,))
    joint = apply_change(start, cc((ADD, 4), (LEARNER, 1)))  # AUTO + 2 changes -> joint
    assert joint.joint and joint.auto_leave
    assert joint.voters == {2, 3, 4} and joint.voters_outgoing == {1, 2, 3}
    assert joint.learners_next == {1}  # still an outgoing voter; learner after leaving
    with pytest.raises(ConfChangeError, match="already joint"):
        apply_change(joint, cc((ADD, 5), t=1))
    with pytest.raises(ConfChangeError, match="simple config change in a joint"):
        apply_change(joint, cc((ADD, 5)))
    left = apply_change(joint, ConfChange())
    assert not left.joint and left.voters == {2, 3, 4} and left.learners == {1}
    assert left.to_conf_state() == ConfState(voters=(2, 3, 4), learners=(1,))


def test_explicit_joint_does_not_auto_leave_and_leave_requires_joint() -> None:
    joint = apply_change(m((1, 2, 3)), cc((REMOVE, 3), t=2))
    assert joint.joint and not joint.auto_leave
    with pytest.raises(ConfChangeError, match="non-joint"):
        apply_change(m((1, 2, 3)), ConfChange())
