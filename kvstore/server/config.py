"""Member configuration: etcd's flags, limits and the deterministic member/cluster IDs."""

from __future__ import annotations

import hashlib
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from kvstore.auth.passwords import MAX_COST, MIN_COST
from kvstore.auth.tokens import TokenOptionError, token_provider

# etcd's defaults (the limits live here, every one is a flag).
DEFAULT_HEARTBEAT_MS = 100
DEFAULT_ELECTION_MS = 1000
DEFAULT_SNAPSHOT_COUNT = 100_000
# etcd's --backend-batch-interval is 100 ms; ours commits twice as often (a smaller
# dirty set per LMDB commit on the loop thread). --backend-batch-limit as etcd's.
DEFAULT_BACKEND_BATCH_INTERVAL_SECONDS = 0.05
DEFAULT_BACKEND_BATCH_LIMIT = 10_000
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # 1.5 MiB
GRPC_OVERHEAD_BYTES = 512 * 1024
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024 * 1024 * 1024
"""What --quota-backend-bytes=0 (the flag's default) means; a negative value disables it."""
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_MAX_CONCURRENT_STREAMS = 10_000
# etcd's WAL segments are 64 MiB, preallocated; smaller ones save disk where many members
# share a small disk (tests, laptops). A segment must hold the largest entry's frame, or
# it is cut after every write.
DEFAULT_WAL_SEGMENT_BYTES = 64 * 1024 * 1024
MIN_WAL_SEGMENT_BYTES = 1024 * 1024
SERVER_VERSION = "3.5.0"
"""Version we report (the etcd API level we implement)."""
CLUSTER_VERSION = "3.5.0"


class ConfigError(ValueError):
    """A bad flag value: reported as one line, not a traceback."""


def host_port(url: str) -> tuple[str, int]:
    """``http(s)://host:port`` (or ``host:port``) -> (host, port)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or parts.hostname is None or port is None:
        raise ConfigError(f"bad URL {url!r}: want http://host:port or https://host:port")
    return parts.hostname, port


def is_https(url: str) -> bool:
    return urlsplit(url).scheme == "https"


@dataclass
class TLSFiles:
    """One side's certificate, key, trusted CA and whether client certificates are required.

    ``prefix`` is ``""`` for the client side and ``"peer-"`` for the peer side;
    it names the flags in error messages.
    """

    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    prefix: str = ""
    _pem: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def empty(self) -> bool:
        """No certificate or key given (etcd's TLSInfo.Empty)."""
        return not self.cert_file and not self.key_file

    def flag(self, name: str) -> str:
        return f"--{self.prefix}{name}"

    def validate(self) -> None:
        """Check that the flags fit together and that the files are usable."""
        if self.empty():
            if self.client_cert_auth:
                raise ConfigError(
                    f"{self.flag('client-cert-auth')} needs {self.flag('cert-file')} "
                    f"and {self.flag('key-file')}"
                )
            if self.trusted_ca_file:
                raise ConfigError(
                    f"{self.flag('trusted-ca-file')} needs {self.flag('cert-file')} "
                    f"and {self.flag('key-file')}"
                )
            return
        if not self.cert_file or not self.key_file:
            given, missing = (
                ("cert-file", "key-file") if self.cert_file else ("key-file", "cert-file")
            )
            raise ConfigError(
                f"{self.flag(given)} given without {self.flag(missing)}: both must be present"
            )
        if self.client_cert_auth and not self.trusted_ca_file:
            raise ConfigError(
                f"{self.flag('client-cert-auth')} needs {self.flag('trusted-ca-file')} "
                "(the CA that signs client certificates)"
            )
        for name, path in (
            ("cert-file", self.cert_file),
            ("key-file", self.key_file),
            ("trusted-ca-file", self.trusted_ca_file),
        ):
            if path:
                try:
                    self._pem[name] = Path(path).read_bytes()
                except OSError as error:
                    raise ConfigError(
                        f"cannot read {self.flag(name)} {path}: {error.strerror}"
                    ) from None
        # The ssl module parses the PEM and checks that the key belongs to the certificate.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as error:
            raise ConfigError(
                f"{self.flag('cert-file')} {self.cert_file} and {self.flag('key-file')} "
                f"{self.key_file} are not a certificate and its key: {error.reason}"
            ) from None
        if self.trusted_ca_file:
            try:
                context.load_verify_locations(self.trusted_ca_file)
            except ssl.SSLError as error:
                raise ConfigError(
                    f"{self.flag('trusted-ca-file')} {self.trusted_ca_file} holds no "
                    f"usable certificate: {error.reason}"
                ) from None

    def check_urls(self, urls: list[str], what: str) -> None:
        """An https URL needs a certificate and key (etcd's check, in its words)."""
        for url in urls:
            if is_https(url) and self.empty():
                raise ConfigError(
                    f"TLS key/cert ({self.flag('cert-file')}, {self.flag('key-file')}) "
                    f"must be provided for {what} url {url} with HTTPS scheme"
                )

    def pem(self, name: str) -> bytes | None:
        """The contents of the file given by flag ``name`` (read by validate), if given."""
        return self._pem.get(name)


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
    # etcd's --backend-batch-interval and --backend-batch-limit: the MVCC batch is
    # committed when either is reached (the WAL, durable first, covers the rest).
    backend_batch_interval: float = DEFAULT_BACKEND_BATCH_INTERVAL_SECONDS
    backend_batch_limit: int = DEFAULT_BACKEND_BATCH_LIMIT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    quota_backend_bytes: int = 0
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    wal_segment_bytes: int = DEFAULT_WAL_SEGMENT_BYTES
    # etcd's --max-concurrent-streams is unbounded; ours bounds what one connection holds.
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    listen_metrics_urls: list[str] = field(default_factory=list)
    # etcd's --listen-client-http-urls: the JSON gateway and HTTP endpoints there, and then
    # gRPC alone on --listen-client-urls (by default both share the client URLs).
    listen_client_http_urls: list[str] = field(default_factory=list)
    # etcd's --experimental-watch-progress-notify-interval (default 10 minutes).
    watch_progress_notify_interval: float = 600.0
    # etcd's --experimental-initial-corrupt-check and --experimental-corrupt-check-time (0: off).
    initial_corrupt_check: bool = False
    corrupt_check_time: float = 0.0
    client_tls: TLSFiles = field(default_factory=TLSFiles)
    # etcd's --auth-token (simple, or jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...),
    # --auth-token-ttl (seconds, simple tokens) and --bcrypt-cost.
    auth_token: str = "simple"
    auth_token_ttl: float = 300.0
    bcrypt_cost: int = 10
    peer_tls: TLSFiles = field(default_factory=lambda: TLSFiles(prefix="peer-"))
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
        if self.backend_batch_interval <= 0:
            raise ConfigError("--backend-batch-interval must be positive")
        if self.backend_batch_limit <= 0:
            raise ConfigError("--backend-batch-limit must be positive")
        if self.max_request_bytes <= 0:
            raise ConfigError("--max-request-bytes must be positive")
        if self.max_txn_ops <= 0:
            raise ConfigError("--max-txn-ops must be positive")
        if self.max_concurrent_streams <= 0:
            raise ConfigError("--max-concurrent-streams must be positive")
        if self.wal_segment_bytes < MIN_WAL_SEGMENT_BYTES:
            raise ConfigError(f"--wal-segment-size must be at least {MIN_WAL_SEGMENT_BYTES} bytes")
        for url in [
            *self.listen_client_urls,
            *self.advertise_client_urls,
            *self.listen_peer_urls,
            *self.initial_advertise_peer_urls,
            *self.listen_metrics_urls,
            *self.listen_client_http_urls,
        ]:
            host_port(url)
        try:
            token_provider(self.auth_token, self.auth_token_ttl)
        except TokenOptionError as error:
            raise ConfigError(str(error)) from None
        if not MIN_COST <= self.bcrypt_cost <= MAX_COST:
            raise ConfigError(f"--bcrypt-cost must be between {MIN_COST} and {MAX_COST}")
        grpc_addresses = {host_port(url) for url in self.listen_client_urls}
        for url in self.listen_client_http_urls:
            if host_port(url) in grpc_addresses:
                raise ConfigError(
                    "cannot bind both --listen-client-urls and --listen-client-http-urls "
                    f"on the same url {url}"
                )
        self.client_tls.validate()
        self.peer_tls.validate()
        self.client_tls.check_urls(
            [*self.listen_client_urls, *self.advertise_client_urls, *self.listen_client_http_urls],
            "client",
        )
        self.peer_tls.check_urls(
            [*self.listen_peer_urls, *self.initial_advertise_peer_urls], "peer"
        )
        self.client_tls.check_urls(self.listen_metrics_urls, "metrics")
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
