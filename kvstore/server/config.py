"""Member configuration: etcd's flags, limits and the deterministic member/cluster IDs."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# etcd's defaults (the limits live here, every one is a flag).
DEFAULT_HEARTBEAT_MS = 100
DEFAULT_ELECTION_MS = 1000
DEFAULT_SNAPSHOT_COUNT = 100_000
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # 1.5 MiB
GRPC_OVERHEAD_BYTES = 512 * 1024
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024 * 1024 * 1024
"""What --quota-backend-bytes=0 (the flag's default) means; a negative value disables it."""
DEFAULT_MAX_TXN_OPS = 128
SERVER_VERSION = "3.5.0"
"""Version we report (the etcd API level we implement)."""
CLUSTER_VERSION = "3.5.0"


class ConfigError(ValueError):
    """A bad flag value: reported as one line, not a traceback."""


def host_port(url: str) -> tuple[str, int]:
    """``http://host:port`` (or ``host:port``) -> (host, port)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "") or parts.hostname is None or port is None:
        raise ConfigError(f"bad URL {url!r}: want http://host:port (TLS is not supported)")
    return parts.hostname, port


def member_id(peer_urls: list[str], token: str) -> int:
    """etcd's member ID: sha1(sorted peer URLs + cluster token), first 8 bytes big endian."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return int(struct.unpack(">Q", digest[:8])[0])


def cluster_id(member_ids: list[int]) -> int:
    """etcd's cluster ID: sha1 of the sorted member IDs (8 bytes big endian each)."""
    b = b"".join(struct.pack(">Q", i) for i in sorted(member_ids))
    return int(struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0])


@dataclass(frozen=True)
class MemberInfo:
    id: int
    name: str
    peer_urls: tuple[str, ...]


def parse_initial_cluster(spec: str, token: str) -> list[MemberInfo]:
    """``name=url,name=url2,...`` -> members (a name may repeat for several URLs)."""
    urls: dict[str, list[str]] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"bad --initial-cluster entry {item!r}: want name=http://host:port")
        host_port(url)
        urls.setdefault(name, []).append(url)
    if not urls:
        raise ConfigError("--initial-cluster is empty")
    members = [MemberInfo(member_id(u, token), n, tuple(u)) for n, u in urls.items()]
    if len({m.id for m in members}) != len(members):
        raise ConfigError("--initial-cluster lists the same peer URLs twice")
    return members


@dataclass
class ServerConfig:
    name: str
    data_dir: Path
    listen_client_urls: list[str]
    advertise_client_urls: list[str]
    listen_peer_urls: list[str]
    initial_advertise_peer_urls: list[str]
    initial_cluster: str
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    election_ms: int = DEFAULT_ELECTION_MS
    snapshot_count: int = DEFAULT_SNAPSHOT_COUNT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    quota_backend_bytes: int = 0
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    listen_metrics_urls: list[str] = field(default_factory=list)
    # etcd's --experimental-watch-progress-notify-interval (default 10 minutes).
    watch_progress_notify_interval: float = 600.0
    members: list[MemberInfo] = field(default_factory=list)
    self_id: int = 0
    cluster_id: int = 0

    def validate(self) -> None:
        """Check the flags and derive the member set and IDs."""
        if self.initial_cluster_state not in ("new", "existing"):
            raise ConfigError("--initial-cluster-state must be 'new' or 'existing'")
        if self.heartbeat_ms <= 0 or self.election_ms < 5 * self.heartbeat_ms:
            raise ConfigError("--election-timeout must be at least 5 times --heartbeat-interval")
        if self.snapshot_count <= 0:
            raise ConfigError("--snapshot-count must be positive")
        if self.max_request_bytes <= 0:
            raise ConfigError("--max-request-bytes must be positive")
        for url in [
            *self.listen_client_urls,
            *self.advertise_client_urls,
            *self.listen_peer_urls,
            *self.initial_advertise_peer_urls,
            *self.listen_metrics_urls,
        ]:
            host_port(url)
        self.members = parse_initial_cluster(self.initial_cluster, self.initial_cluster_token)
        mine = [m for m in self.members if m.name == self.name]
        if not mine:
            raise ConfigError(f"--initial-cluster has no member named {self.name!r}")
        if sorted(mine[0].peer_urls) != sorted(self.initial_advertise_peer_urls):
            raise ConfigError(
                "--initial-cluster must include "
                f"{self.name}={','.join(self.initial_advertise_peer_urls)}"
            )
        self.self_id = mine[0].id
        self.cluster_id = cluster_id([m.id for m in self.members])

    @property
    def backend_quota(self) -> int | None:
        """Bytes the backend may use before writes are refused; None when disabled."""
        if self.quota_backend_bytes < 0:
            return None
        return self.quota_backend_bytes or DEFAULT_QUOTA_BACKEND_BYTES

    @property
    def election_ticks(self) -> int:
        return max(2, self.election_ms // self.heartbeat_ms)

    @property
    def request_timeout(self) -> float:
        """etcd's ReqTimeout: 5 s plus two election timeouts."""
        return 5.0 + 2 * self.election_ms / 1000
