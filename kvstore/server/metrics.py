"""Prometheus text exposition of a member's metrics (etcd's metric names where they apply)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = _BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.total += v
        self.n += 1

    def render(self, name: str, help_: str) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{le="{b}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {self.total}")
        out.append(f"{name}_count {self.n}")
        return out


@dataclass
class Metrics:
    has_leader: int = 0
    is_leader: int = 0
    leader_changes: int = 0
    proposals_committed: int = 0
    proposals_applied: int = 0
    proposals_pending: int = 0
    proposals_failed: int = 0
    slow_apply: int = 0
    db_size: int = 0
    # etcd's mvcc counters: puts and deletes as applied (on every member, txn ops included),
    # ranges as served by this member.
    mvcc_range: int = 0
    mvcc_put: int = 0
    mvcc_delete: int = 0
    mvcc_txn: int = 0
    wal_fsync: Histogram = field(default_factory=Histogram)
    backend_commit: Histogram = field(default_factory=Histogram)
    apply_duration: Histogram = field(default_factory=Histogram)
    peer_sent_failures: dict[str, int] = field(default_factory=dict)
    snapshot_send_success: dict[str, int] = field(default_factory=dict)
    snapshot_send_failures: dict[str, int] = field(default_factory=dict)

    def count_applied(self, kind: str, result: object) -> None:
        """Count an applied request (its ``peerpb.Request`` field name) as etcd's mvcc does."""
        if kind == "put":
            self.mvcc_put += 1
        elif kind == "delete_range":
            self.mvcc_delete += 1
        elif kind == "txn":
            self.mvcc_txn += 1
            # The branch that ran: its ops are what the backend saw.
            for op in getattr(result, "responses", ()):
                which = op.WhichOneof("response")
                if which == "response_put":
                    self.mvcc_put += 1
                elif which == "response_delete_range":
                    self.mvcc_delete += 1
                elif which == "response_range":
                    self.mvcc_range += 1

    def render(self) -> str:
        g: list[tuple[str, str, str, float]] = [
            ("etcd_server_has_leader", "gauge", "Whether or not a leader exists.", self.has_leader),
            (
                "etcd_server_is_leader",
                "gauge",
                "Whether or not this member is a leader.",
                self.is_leader,
            ),
            (
                "etcd_server_leader_changes_seen_total",
                "counter",
                "The number of leader changes seen.",
                self.leader_changes,
            ),
            (
                "etcd_server_proposals_committed_total",
                "gauge",
                "The total number of consensus proposals committed.",
                self.proposals_committed,
            ),
            (
                "etcd_server_proposals_applied_total",
                "gauge",
                "The total number of consensus proposals applied.",
                self.proposals_applied,
            ),
            (
                "etcd_server_proposals_pending",
                "gauge",
                "The current number of pending proposals to commit.",
                self.proposals_pending,
            ),
            (
                "etcd_server_proposals_failed_total",
                "counter",
                "The total number of failed proposals seen.",
                self.proposals_failed,
            ),
            (
                "etcd_mvcc_db_total_size_in_bytes",
                "gauge",
                "Total size of the underlying database physically allocated in bytes.",
                self.db_size,
            ),
            (
                "etcd_mvcc_range_total",
                "counter",
                "Total number of ranges seen by this member.",
                self.mvcc_range,
            ),
            (
                "etcd_mvcc_put_total",
                "counter",
                "Total number of puts seen by this member.",
                self.mvcc_put,
            ),
            (
                "etcd_mvcc_delete_total",
                "counter",
                "Total number of deletes seen by this member.",
                self.mvcc_delete,
            ),
            (
                "etcd_mvcc_txn_total",
                "counter",
                "Total number of txns seen by this member.",
                self.mvcc_txn,
            ),
        ]
        out: list[str] = []
        for name, typ, help_, value in g:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {typ}", f"{name} {value}"]
        out += self.wal_fsync.render(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        )
        out += self.backend_commit.render(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        )
        out += self.apply_duration.render(
            "etcd_server_apply_duration_seconds",
            "The latency distributions of v2 apply called by backend.",
        )
        name = "etcd_network_peer_sent_failures_total"
        out += [
            f"# HELP {name} The total number of send failures from peers.",
            f"# TYPE {name} counter",
        ]
        for peer, n in sorted(self.peer_sent_failures.items()):
            out.append(f'{name}{{To="{peer}"}} {n}')
        for name, help_, counts in (
            (
                "etcd_network_snapshot_send_success",
                "Total number of successful snapshot sends.",
                self.snapshot_send_success,
            ),
            (
                "etcd_network_snapshot_send_failures",
                "Total number of snapshot send failures.",
                self.snapshot_send_failures,
            ),
        ):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            out += [f'{name}{{To="{peer}"}} {n}' for peer, n in sorted(counts.items())]
        return "\n".join(out) + "\n"
