"""Opening a member's storage and building its Raft node: restart, join, or a new cluster.

* Restart: the WAL exists. Like etcd, the member keeps the IDs written in its
  WAL (the membership may have changed since ``--initial-cluster`` was
  written, or it joined later) and replays the WAL after its newest snapshot.
* Join (``--initial-cluster-state existing``): an empty log; the leader sends a
  snapshot or entries.
* New cluster: a bootstrap snapshot with the initial voters, term 1.
"""

from __future__ import annotations

import logging
import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from kvstore.auth import AuthStore, token_provider
from kvstore.mvcc import MVCCStore, WatchHub, open_store
from kvstore.mvcc.backend import DEFAULT_MAP_SIZE
from kvstore.raft import Config, HardState, RaftNode, initial_snapshot
from kvstore.server.config import ServerConfig
from kvstore.server.snapshotter import restore_store
from kvstore.storage import WAL, SnapshotStore, valid_snapshot_markers

log = logging.getLogger(__name__)

HEARTBEAT_TICKS = 1
"""Raft ticks between heartbeats (a tick is --heartbeat-interval)."""
MAX_UNCOMMITTED_BYTES = 64 * 1024 * 1024
"""Raft refuses proposals past this many bytes of uncommitted entries."""
MAP_SIZE_PER_QUOTA = 2
"""LMDB's map (the largest the file may grow) in quotas: room for the writes in flight."""
_WAL_METADATA = struct.Struct(">QQ")  # member id, cluster id


@dataclass
class Storage:
    """One member's identity, durable state and Raft node, ready to run."""

    member_id: int
    cluster_id: int
    raft: RaftNode
    wal: WAL
    snapshots: SnapshotStore
    store: MVCCStore
    hub: WatchHub
    auth: AuthStore


def bootstrap(cfg: ServerConfig) -> Storage:
    member_dir = Path(cfg.data_dir) / "member"
    wal_dir = member_dir / "wal"
    snapshots = SnapshotStore(member_dir / "snap")
    store, hub = open_store(
        member_dir / "db", max_txn_ops=cfg.max_txn_ops, map_size=_map_size(cfg.backend_quota)
    )
    auth = AuthStore(store.backend, token_provider(cfg.auth_token, cfg.auth_token_ttl))
    store.reloaded.append(auth.load)  # a snapshot from the leader carries the auth buckets
    member_id, cluster_id = cfg.self_id, cfg.cluster_id
    rng = random.Random(os.urandom(8))
    if WAL.exists(wal_dir):
        snap = snapshots.load_newest(valid_snapshot_markers(wal_dir))
        wal, rec = WAL.open(
            wal_dir, snap.metadata if snap else None, segment_size=cfg.wal_segment_bytes
        )
        if len(rec.metadata) == _WAL_METADATA.size:
            mid, cid = _WAL_METADATA.unpack(rec.metadata)
            if (mid, cid) != (member_id, cluster_id):
                log.info("member %x of cluster %x (from the WAL)", mid, cid)
            member_id, cluster_id = mid, cid
        if snap is not None and snap.data and store.consistent_index < snap.metadata.index:
            # The snapshot from the leader was saved (and the WAL before it released) but
            # the member stopped before installing it: install it now.
            log.info(
                "backend at index %d is behind the saved snapshot at %d: restoring it",
                store.consistent_index,
                snap.metadata.index,
            )
            restore_store(store, member_dir / "snap", snap.data)
        raft = RaftNode(
            _raft_config(cfg, member_id),
            rng,
            hard_state=rec.hard_state,
            snapshot=snap,
            entries=rec.entries,
        )
        log.info(
            "restarted member %x: term=%d commit=%d entries=%d consistent_index=%d",
            member_id,
            rec.hard_state.term,
            rec.hard_state.commit,
            len(rec.entries),
            store.consistent_index,
        )
    elif cfg.initial_cluster_state == "existing":
        wal = WAL.create(
            wal_dir, _WAL_METADATA.pack(member_id, cluster_id), segment_size=cfg.wal_segment_bytes
        )
        raft = RaftNode(_raft_config(cfg, member_id), rng)
        log.info("member %x joins existing cluster %x", member_id, cluster_id)
    else:
        snap = initial_snapshot(m.id for m in cfg.members)
        hs = HardState(term=1, commit=1)
        snapshots.save(snap)
        wal = WAL.create(
            wal_dir, _WAL_METADATA.pack(member_id, cluster_id), segment_size=cfg.wal_segment_bytes
        )
        wal.save_snapshot(snap.metadata)
        wal.save(hs, [])
        raft = RaftNode(_raft_config(cfg, member_id), rng, hard_state=hs, snapshot=snap)
        log.info("started new member %x of cluster %x", member_id, cluster_id)
    return Storage(member_id, cluster_id, raft, wal, snapshots, store, hub, auth)


def _raft_config(cfg: ServerConfig, member_id: int) -> Config:
    return Config(
        id=member_id,
        election_tick=cfg.election_ticks,
        heartbeat_tick=HEARTBEAT_TICKS,
        max_uncommitted_size=MAX_UNCOMMITTED_BYTES,
    )


def _map_size(quota: int | None) -> int:
    """LMDB's map bounds the file: leave room past the quota for the writes in flight."""
    if quota is None:
        return DEFAULT_MAP_SIZE
    return max(DEFAULT_MAP_SIZE, MAP_SIZE_PER_QUOTA * quota)
