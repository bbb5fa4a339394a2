"""The etcd-compatible server: one process = one member (``kvstore serve``).

Modules:

* :mod:`~kvstore.server.config` -- flags (etcd's names and defaults), limits,
  deterministic member IDs (sha1 of sorted peer URLs + cluster token) and
  cluster ID (sha1 of the sorted member IDs), as etcd derives them.
* :mod:`~kvstore.server.node` -- the raft loop: ticks from the monotonic clock,
  proposals batched into one Ready (one WAL write + fdatasync per Ready, in a
  worker thread), committed entries applied to the MVCC store on the loop
  thread, waiters woken by the request id carried in the entry envelope
  (``peerpb.Request``), batched ReadIndex for linearizable reads, leader-only
  lease expiry and checkpoints proposed through Raft, snapshots every
  ``--snapshot-count`` applied entries with log compaction and WAL release.
* :mod:`~kvstore.server.transport` -- peer gRPC (``peerpb.Peer/Send``, one
  client stream per peer, bounded queue, drop + report-unreachable on
  overflow, reconnect with backoff; unknown senders rejected). Snapshots go
  inline in a MsgSnap for now.
* :mod:`~kvstore.server.api` -- etcd v3 KV, Watch, Lease, Cluster.MemberList,
  Maintenance (Status, Alarm, HashKV, MoveLeader); errors mapped to etcd's
  gRPC status in one place (:func:`kvstore.server.status.to_status`).
* :mod:`~kvstore.server.http` -- ``/health``, ``/readyz``, ``/livez``,
  ``/version`` and ``/metrics`` on a separate HTTP/1.1 listener
  (``--listen-metrics-urls``; default: client port + 2, so 2379 -> 2381,
  etcd's conventional metrics port). etcd also answers these on its client
  port; we do not (gRPC only there).
* :mod:`~kvstore.server.bench` -- rough throughput and failover figures, ours
  vs a real etcd (``kvstore bench``).
"""
