"""The etcd-compatible server: one process = one member (``kvstore serve``).

Modules, from the composition root down (each imports only those below it):

* :mod:`~kvstore.server.server` -- wires one member: node, membership, peer
  transport, the client services on :mod:`kvstore.rpc` (our own small gRPC
  server) and, on the same port, HTTP; the lifecycle in one task group.
* :mod:`~kvstore.server.http` -- the member's HTTP side on aiohttp: etcd's
  JSON gateway (:mod:`kvstore.gateway`), /health, /version, /metrics
  (:mod:`~kvstore.server.metrics`).
* :mod:`~kvstore.server.services` -- etcd's KV, Watch, Lease, Cluster,
  Maintenance, v3lock and v3election services as plain functions of a
  request, served by gRPC and by the JSON gateway alike;
  :mod:`~kvstore.server.status` is the one map from errors to gRPC status.
* :mod:`~kvstore.server.membership` -- runtime membership (etcd's checks,
  conf changes through Raft, the member registry in the backend);
  :mod:`~kvstore.server.leases` -- lease calls forwarded to the leader;
  :mod:`~kvstore.server.corruption` -- etcd's initial and periodic HashKV
  comparison between members (CORRUPT alarm).
* :mod:`~kvstore.server.node` -- the raft loop: ticks, Ready handling, WAL
  persistence, sending. Around it: :mod:`~kvstore.server.bootstrap` (opening
  storage, restart/join/new), :mod:`~kvstore.server.waiters` (bounded
  proposal futures), :mod:`~kvstore.server.reads` (ReadIndex rounds),
  :mod:`~kvstore.server.applier` (applying committed entries),
  :mod:`~kvstore.server.snapshotter` (taking and installing snapshots).
* :mod:`~kvstore.server.transport` -- the peer transport over the frames of
  :mod:`~kvstore.server.peerwire`; :mod:`~kvstore.server.codec` converts
  Raft values to and from the peer protos.
* :mod:`~kvstore.server.config` -- etcd's flags, limits and IDs;
  :mod:`~kvstore.server.tls` -- certificates for listeners and dialers.
* :mod:`~kvstore.server.etcd_format` and :mod:`~kvstore.server.backup` --
  our backend in etcd's bbolt layout, both ways: Maintenance.Snapshot and
  Hash, ``kvstore snapshot status|restore`` (``python -m
  kvstore.cli.backup_bench``: backup size and time, ours vs etcd).
"""
