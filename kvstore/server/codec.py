"""Conversions between the Raft core's values and the peer protos."""

from __future__ import annotations

from kvstore._pb.peerpb import peer_pb2
from kvstore.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)


def _conf_to_pb(cs: ConfState, out: peer_pb2.ConfState) -> None:
    out.voters.extend(cs.voters)
    out.learners.extend(cs.learners)
    out.voters_outgoing.extend(cs.voters_outgoing)
    out.learners_next.extend(cs.learners_next)
    out.auto_leave = cs.auto_leave


def _conf_from_pb(p: peer_pb2.ConfState) -> ConfState:
    return ConfState(
        voters=tuple(p.voters),
        learners=tuple(p.learners),
        voters_outgoing=tuple(p.voters_outgoing),
        learners_next=tuple(p.learners_next),
        auto_leave=p.auto_leave,
    )


def message_to_pb(m: Message, p: peer_pb2.Message | None = None) -> peer_pb2.Message:
    """Encode ``m`` into ``p`` (in place, e.g. a new element of a batch) or a new message."""
    if p is None:
        p = peer_pb2.Message()
    p.type = m.type
    p.to = m.to
    p.frm = m.frm
    p.term = m.term
    p.index = m.index
    p.commit = m.commit
    # Fields that are usually zero: skipping them is cheaper than setting them.
    if m.log_term:
        p.log_term = m.log_term
    if m.reject:
        p.reject = True
    if m.reject_hint:
        p.reject_hint = m.reject_hint
    if m.context:
        p.context = m.context
    if m.entries:
        add = p.entries.add
        for e in m.entries:
            add(term=e.term, index=e.index, type=int(e.type), data=e.data)
    if m.snapshot is not None:
        meta = m.snapshot.metadata
        p.snapshot.data = m.snapshot.data
        p.snapshot.metadata.index = meta.index
        p.snapshot.metadata.term = meta.term
        _conf_to_pb(meta.conf_state, p.snapshot.metadata.conf_state)
    return p


def message_from_pb(p: peer_pb2.Message) -> Message:
    snap = None
    if p.HasField("snapshot"):
        md = p.snapshot.metadata
        snap = Snapshot(
            SnapshotMetadata(md.index, md.term, _conf_from_pb(md.conf_state)), p.snapshot.data
        )
    return Message(
        type=MessageType(p.type),
        to=p.to,
        frm=p.frm,
        term=p.term,
        log_term=p.log_term,
        index=p.index,
        entries=[Entry(e.term, e.index, EntryType(e.type), e.data) for e in p.entries],
        commit=p.commit,
        snapshot=snap,
        reject=p.reject,
        reject_hint=p.reject_hint,
        context=p.context,
    )
