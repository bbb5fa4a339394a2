"""The etcd-compatible server: one process = one member (``kvstore serve``).

Modules, from the composition root down:

* :mod:`~kvstore.server.server` -- wires one member: node, membership, peer
  transport, the client services on :mod:`kvstore.rpc` (our own small gRPC
  server) and, on the same port, HTTP; the lifecycle in one task group.
* :mod:`~kvstore.server.http` -- the member's HTTP side on aiohttp: etcd's
  JSON gateway (:mod:`kvstore.gateway`), /health, /version, /metrics.
* :mod:`~kvstore.server.services` -- etcd's KV, Watch, Lease, Cluster,
  Maintenance, v3lock and v3election services as plain functions of a
  request, served by gRPC and by the JSON gateway alike.
* :mod:`~kvstore.server.status` -- the one map from errors to gRPC status.
* :mod:`~kvstore.server.membership` -- runtime membership (etcd's checks,
  conf changes through Raft, the member registry in the backend).
* :mod:`~kvstore.server.leases` -- lease calls forwarded to the leader.
* :mod:`~kvstore.server.node` -- the raft loop: ticks, Ready handling, WAL
  persistence, apply, proposals and read-index rounds.
* :mod:`~kvstore.server.transport` -- the peer transport.
* :mod:`~kvstore.server.config` -- etcd's flags, limits and IDs.
* :mod:`~kvstore.server.etcd_format` and :mod:`~kvstore.server.backup` --
  our backend in etcd's bbolt layout, both ways: Maintenance.Snapshot and
  Hash, ``kvstore snapshot status|restore`` (``backup_bench``: backup size and
  time, ours vs etcd).
* :mod:`~kvstore.server.corruption` -- etcd's initial and periodic HashKV
  comparison between members (CORRUPT alarm).
"""
