"""Membership changes: the byte codec for ConfChange and the pure config changer.

The changer works on plain id sets (incoming voters, outgoing voters, learners,
learners_next) and follows the rules of etcd-io/raft's ``confchange`` package:
at most one voter may change without a joint config; a joint config is entered
by copying the incoming voters to the outgoing side and left by dropping it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvstore.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
)

__all__ = [
    "ConfChangeError",
    "Membership",
    "apply_change",
    "decode_conf_change",
    "encode_conf_change",
]

_MAGIC = 0xCC
_HEADER = struct.Struct(">BBBH")  # magic, version, transition, number of changes
_CHANGE = struct.Struct(">BQ")  # type, node id


class ConfChangeError(ValueError):
    """A membership change that cannot be applied to the current configuration."""


def encode_conf_change(cc: ConfChange) -> bytes:
    """Encode a ConfChange for Entry.data (type CONF_CHANGE); the WAL stores it opaquely."""
    parts = [_HEADER.pack(_MAGIC, 1, int(cc.transition), len(cc.changes))]
    parts.extend(_CHANGE.pack(int(c.type), c.node_id) for c in cc.changes)
    parts.append(cc.context)
    return b"".join(parts)


def decode_conf_change(data: bytes) -> ConfChange:
    """Inverse of :func:`encode_conf_change`; raises ConfChangeError on malformed input."""
    if len(data) < _HEADER.size:
        raise ConfChangeError("conf change too short")
    magic, version, transition, n = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC or version != 1:
        raise ConfChangeError("not an encoded conf change")
    off = _HEADER.size
    if len(data) < off + n * _CHANGE.size:
        raise ConfChangeError("conf change truncated")
    changes = []
    for _ in range(n):
        typ, node_id = _CHANGE.unpack_from(data, off)
        off += _CHANGE.size
        changes.append(ConfChangeSingle(ConfChangeType(typ), node_id))
    return ConfChange(tuple(changes), ConfChangeTransition(transition), bytes(data[off:]))


@dataclass(slots=True, frozen=True)
class Membership:
    """Who votes and who learns. Joint when ``voters_outgoing`` is non-empty."""

    voters: frozenset[int] = frozenset()
    voters_outgoing: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    learners_next: frozenset[int] = frozenset()  # demoted voters, learners after leaving joint
    auto_leave: bool = False

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    def tracked(self) -> frozenset[int]:
        """Every id the leader keeps a Progress for."""
        return self.voters | self.voters_outgoing | self.learners | self.learners_next

    def to_conf_state(self) -> ConfState:
        return ConfState(
            voters=tuple(sorted(self.voters)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters_outgoing)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )

    @classmethod
    def from_conf_state(cls, cs: ConfState) -> Membership:
        m = cls(
            frozenset(cs.voters),
            frozenset(cs.voters_outgoing),
            frozenset(cs.learners),
            frozenset(cs.learners_next),
            cs.auto_leave,
        )
        m.check()
        return m

    def check(self) -> None:
        """Raise ConfChangeError unless the structural invariants hold."""
        if self.learners & (self.voters | self.voters_outgoing):
            raise ConfChangeError("a learner is also a voter")
        if not self.learners_next <= self.voters_outgoing:
            raise ConfChangeError("learners_next must be outgoing voters")
        if self.learners_next & self.learners:
            raise ConfChangeError("learners_next overlaps learners")
        if not self.joint and (self.learners_next or self.auto_leave):
            raise ConfChangeError("learners_next/auto_leave set outside a joint config")


def _apply_singles(
    m: Membership, changes: tuple[ConfChangeSingle, ...]
) -> tuple[set[int], set[int], set[int]]:
    voters, learners, learners_next = set(m.voters), set(m.learners), set(m.learners_next)
    for c in changes:
        nid = c.node_id
        if nid == 0:
            continue  # etcd treats id 0 as a no-op
        if c.type == ConfChangeType.ADD_NODE:
            learners.discard(nid)
            learners_next.discard(nid)
            voters.add(nid)
        elif c.type == ConfChangeType.ADD_LEARNER_NODE:
            if nid in learners:
                continue
            voters.discard(nid)
            learners_next.discard(nid)
            # A voter still in the outgoing config can only become a learner on leave.
            if nid in m.voters_outgoing:
                learners_next.add(nid)
            else:
                learners.add(nid)
        elif c.type == ConfChangeType.REMOVE_NODE:
            voters.discard(nid)
            learners.discard(nid)
            learners_next.discard(nid)
        else:  # pragma: no cover - enum is closed
            raise ConfChangeError(f"unknown change type {c.type}")
    if not voters:
        raise ConfChangeError("removed all voters")
    return voters, learners, learners_next


def apply_change(m: Membership, cc: ConfChange) -> Membership:
    """Return the membership after ``cc`` (pure; raises ConfChangeError if invalid)."""
    if cc.is_leave_joint:
        if not m.joint:
            raise ConfChangeError("can't leave a non-joint config")
        out = Membership(
            voters=m.voters,
            learners=m.learners | m.learners_next,
        )
        out.check()
        return out
    use_joint, auto_leave = cc.enters_joint()
    if use_joint:
        if m.joint:
            raise ConfChangeError("config is already joint")
        if not m.voters:
            raise ConfChangeError("can't make a zero-voter config joint")
        staged = Membership(m.voters, m.voters, m.learners, m.learners_next, auto_leave)
        voters, learners, learners_next = _apply_singles(staged, cc.changes)
        out = Membership(
            frozenset(voters), m.voters, frozenset(learners), frozenset(learners_next), auto_leave
        )
        out.check()
        return out
    if m.joint:
        raise ConfChangeError("can't apply a simple config change in a joint config")
    voters, learners, learners_next = _apply_singles(m, cc.changes)
    if len(m.voters ^ voters) > 1:
        raise ConfChangeError("more than one voter changed without entering joint config")
    out = Membership(frozenset(voters), frozenset(), frozenset(learners), frozenset(learners_next))
    out.check()
    return out
