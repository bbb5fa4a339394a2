"""Sans-I/O Raft consensus core (see DESIGN.md decision 1).

Driver loop (one per node; see :class:`Ready` for the exact order)::

    node = RaftNode(Config(id=1), random.Random(seed),
                    hard_state=hs, snapshot=snap, entries=wal_entries)
    every tick interval:      node.tick()
    on a peer message:        node.step(msg)
    client write:             node.propose(data) / node.propose_batch(datas)
                              (False = dropped: no leader / transfer / limits; retry)
    linearizable read:        node.read_index(ctx) -> later ReadState(index, ctx);
                              serve once applied >= index
    membership:               node.propose_conf_change(ConfChange(...)); when the
                              CONF_CHANGE entry is applied: node.apply_conf_change(entry.data)
    while node.has_ready():
        rd = node.ready()
        send(rd.messages)                       # may overlap with the fsync below
        wal.save(rd.snapshot, rd.entries, rd.hard_state); fsync
        send(rd.persisted_messages)
        restore_state_machine(rd.snapshot); apply(rd.committed_entries)
        serve(rd.read_states)
        node.advance(rd)

What goes into the WAL: every ``Ready.hard_state`` (term, vote, commit), every
``Ready.entries`` batch (an append that first truncates stored entries with index
>= the batch's first index), and ``Ready.snapshot`` metadata (the log restarts
after it). Restart: ``RaftNode(config, rng, hard_state=<last>, snapshot=<latest>,
entries=<stored entries after the snapshot>)``. Compaction: after applying up to
``i`` call ``node.create_snapshot(i, data)`` then ``node.compact(j)`` (j <= i), and
store the snapshot the same way. Bootstrap a new cluster with
:func:`initial_snapshot` and ``HardState(term=1, commit=1)`` on every founder.
"""

from kvstore.raft.confchange import ConfChangeError, decode_conf_change, encode_conf_change
from kvstore.raft.raft import Config, RaftNode, initial_snapshot
from kvstore.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)

__all__ = [
    "ConfChange",
    "ConfChangeError",
    "ConfChangeSingle",
    "ConfChangeTransition",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
    "decode_conf_change",
    "encode_conf_change",
    "initial_snapshot",
]
