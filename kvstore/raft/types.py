"""Value types shared by the Raft core, the WAL and the transport.

Plain slotted dataclasses: cheap to build in the hot path and easy to
serialise. Field meanings follow the Raft paper and etcd's raftpb.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1  # data is an encoded ConfChange (see confchange codec in this package)


@dataclass(slots=True, frozen=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    """What a node must persist before answering votes or acknowledging entries."""

    term: int = 0
    vote: int = 0  # 0 means "voted for nobody in this term"
    commit: int = 0


EMPTY_HARD_STATE = HardState()


@dataclass(slots=True, frozen=True)
class ConfState:
    """Membership as of some log index (joint when voters_outgoing is non-empty)."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    learners_next: tuple[int, ...] = ()
    auto_leave: bool = False


@dataclass(slots=True, frozen=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(slots=True, frozen=True)
class Snapshot:
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.metadata.index == 0


# --------------------------------------------------------------------------------------
# Additions for the consensus core (kvstore.raft.raft). Everything above is shared with
# the WAL and must stay field-compatible.
# --------------------------------------------------------------------------------------


class MessageType(enum.IntEnum):
    """Message kinds; numbering is ours (not etcd's) and only matters to the peer codec."""

    HUP = 0  # local: start an election
    BEAT = 1  # local: leader should broadcast heartbeats
    PROP = 2  # proposal (local, or forwarded by a follower)
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10  # local: transport could not reach a peer
    SNAP_STATUS = 11  # local: transport reports the outcome of sending a snapshot
    CHECK_QUORUM = 12  # local
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


@dataclass(slots=True)
class Message:
    """One Raft message (fields follow etcd's raftpb.Message).

    ``entries`` is shared, never copied: receivers must treat it as read-only.
    ``context`` carries the campaign kind for votes and the read request id for
    heartbeats/read-index messages.
    """

    type: MessageType
    to: int = 0
    frm: int = 0
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: Sequence[Entry] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0  # add (or promote to) voter
    REMOVE_NODE = 1
    ADD_LEARNER_NODE = 3  # add learner (or demote voter, through a joint config)


class ConfChangeTransition(enum.IntEnum):
    """How a multi-change ConfChange is carried out (etcd's ConfChangeTransition)."""

    AUTO = 0  # simple if possible, else joint with automatic leave
    JOINT_IMPLICIT = 1  # always joint, leave automatically
    JOINT_EXPLICIT = 2  # always joint, application proposes the leave (empty ConfChange)


@dataclass(slots=True, frozen=True)
class ConfChangeSingle:
    type: ConfChangeType
    node_id: int


@dataclass(slots=True, frozen=True)
class ConfChange:
    """A membership change. No changes at all means "leave the joint configuration"."""

    changes: tuple[ConfChangeSingle, ...] = ()
    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    context: bytes = b""

    @property
    def is_leave_joint(self) -> bool:
        return not self.changes

    def enters_joint(self) -> tuple[bool, bool]:
        """(uses a joint config, leaves it automatically)."""
        if self.transition != ConfChangeTransition.AUTO or len(self.changes) > 1:
            return True, self.transition != ConfChangeTransition.JOINT_EXPLICIT
        return False, False


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(slots=True, frozen=True)
class ReadState:
    """Answer to read_index(ctx): reads are linearizable once ``index`` is applied."""

    index: int
    request_ctx: bytes


@dataclass(slots=True, frozen=True)
class SoftState:
    """Volatile state, reported in a Ready when it changes (never persisted)."""

    leader_id: int
    role: Role


@dataclass(slots=True)
class Ready:
    """Work for the driver. Handle it in this order, then call ``RaftNode.advance(ready)``.

    1. send ``messages`` (allowed before persisting, e.g. the leader's MsgApp in
       parallel with its own WAL write, Raft thesis 10.2.1);
    2. persist durably, atomically enough that a crash keeps a prefix of:
       ``snapshot`` (if set: the log is replaced; drop all stored entries),
       ``entries`` (append; first drop stored entries with index >= entries[0].index),
       ``hard_state`` (if set);
    3. send ``persisted_messages`` (votes, append/heartbeat responses);
    4. restore the state machine from ``snapshot`` if set, then apply
       ``committed_entries`` in order (call ``apply_conf_change`` for CONF_CHANGE);
       serve ``read_states`` once their index is applied.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    persisted_messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    @property
    def must_sync(self) -> bool:
        """True when the driver has to fsync before step 3."""
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None
