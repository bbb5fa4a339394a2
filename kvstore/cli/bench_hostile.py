"""``kvstore bench --mode watch-fanout|lease-storm|connections|big-requests``: clients that
misbehave at scale, against our 3-member cluster and a real etcd's, side by side.

Each mode measures, on the member the hostile client talks to (the leader): its
resident memory (RSS, from ``/proc``) before, at the peak and after, and the
latency of a bystander client (a linearizable read and a put of its own key, one at a
time) while the cluster is quiet, under the mode's honest load alone, and with the
hostile clients added; and whether the leader changed.

* ``watch-fanout``: ``--watchers`` watchers (default 10,000) on a busy prefix, over
  ``--streams`` streams, whose client never reads, while a writer puts ``--rate`` per
  second on the prefix. Then the history is compacted and a few streams are read: a
  slow watcher is caught up or cancelled with the compacted revision, as etcd does.
* ``lease-storm``: ``--leases`` leases granted by 64 concurrent clients, then
  ``--streams`` keep-alive streams that each send one request and are abandoned
  unread, their connections left open.
* ``connections``: ``--connections`` client connections (default 1,000) opened at
  once, each making one read and then idling.
* ``big-requests``: ``--count`` keys (default 100,000) under one prefix, read with and
  without a limit; a transaction of 128 puts of 1 MiB in all, and ones past the limits
  (129 ops, 1.8 and 2.5 MiB); ``--count`` leases. The bystander is measured meanwhile.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import grpc

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore._pb.etcdserverpb import rpc_pb2_grpc
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster

Cluster = KVCluster | EtcdCluster

PREFIX = b"/busy/"
PREFIX_END = b"/busy0"
VALUE = b"v" * 256
BYSTANDER_KEY = b"/bystander"
PHASE_SECONDS = 3.0
RSS_SAMPLE_SECONDS = 0.25
TIMEOUT = 15.0
_OWN_POOL = "grpc.use_local_subchannel_pool"


@dataclass
class Result:
    target: str
    rss_mib: dict[str, float] = field(default_factory=dict)
    """before, peak, after."""
    bystander_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    """phase -> (p50, p99) of the bystander's read+put."""
    leader_changes: int = 0
    notes: dict[str, object] = field(default_factory=dict)


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _sockets(pid: int) -> int:
    """Open sockets of process ``pid``."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the directory was listed
            continue
        count += target.startswith("socket:")
    return count


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


class Bench:
    """One target's cluster, its leader, and the load generator's channels to it."""

    def __init__(self, cluster: Cluster, leader: int) -> None:
        self.cluster = cluster
        self.leader = leader
        self.endpoint = cluster.endpoints[leader]
        proc = cluster.members[leader].process
        assert proc is not None
        self.pid = proc.pid
        self.channel = grpc.aio.insecure_channel(self.endpoint, options=[(_OWN_POOL, 1)])
        self.kv = rpc_pb2_grpc.KVStub(self.channel)  # type: ignore[no-untyped-call]
        self.peak = 0.0

    async def close(self) -> None:
        await self.channel.close()

    async def bystander(self, seconds: float) -> tuple[float, float]:
        """(p50, p99) ms of a read and a put, one after the other, for ``seconds``."""
        end = time.monotonic() + seconds
        took = await self.bystander_samples(lambda: time.monotonic() >= end)
        return _pct(took, 0.5), _pct(took, 0.99)

    async def bystander_samples(self, done: Callable[[], bool]) -> list[float]:
        """Seconds each read-and-put took, one after the other, until ``done()``."""
        # A client of its own: its own connection (channels share one by default).
        own = grpc.aio.insecure_channel(self.endpoint, options=[(_OWN_POOL, 1)])
        kv = rpc_pb2_grpc.KVStub(own)  # type: ignore[no-untyped-call]
        took: list[float] = []
        try:
            while not done():
                t0 = time.perf_counter()
                await kv.Range(pb.RangeRequest(key=BYSTANDER_KEY), timeout=TIMEOUT)
                await kv.Put(pb.PutRequest(key=BYSTANDER_KEY, value=b"x"), timeout=TIMEOUT)
                took.append(time.perf_counter() - t0)
        finally:
            await own.close()
        return took

    async def sample_rss(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            await anyio.sleep(RSS_SAMPLE_SECONDS)

    async def writer(self, rate: float, stop: anyio.Event) -> int:
        puts = 0
        t0 = time.monotonic()
        while not stop.is_set():
            wait = t0 + puts / rate - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            key = PREFIX + b"%d" % (puts % 1000)
            await self.kv.Put(pb.PutRequest(key=key, value=VALUE), timeout=TIMEOUT)
            puts += 1
        return puts


async def _with_writer(
    bench: Bench, rate: float, body: Callable[[], Awaitable[None]]
) -> tuple[float, float]:
    """Run ``body`` while the writer puts; the bystander measures meanwhile."""
    stop = anyio.Event()
    got: list[tuple[float, float]] = []
    async with anyio.create_task_group() as tg:

        async def write() -> None:
            await bench.writer(rate, stop)

        tg.start_soon(write)
        await body()
        got.append(await bench.bystander(PHASE_SECONDS))
        stop.set()
    return got[0]


async def watch_fanout(bench: Bench, args: argparse.Namespace, result: Result) -> None:
    result.bystander_ms["load alone"] = await _with_writer(bench, args.rate, _nothing)
    channels = [
        grpc.aio.insecure_channel(bench.endpoint, options=[(_OWN_POOL, 1)]) for _ in range(4)
    ]
    stubs = [rpc_pb2_grpc.WatchStub(c) for c in channels]  # type: ignore[no-untyped-call]
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END))
    per_stream = max(1, args.watchers // args.streams)
    calls = [stubs[i % len(stubs)].Watch() for i in range(args.streams)]

    async def open_watchers() -> None:
        for call in calls:  # written, never read
            for _ in range(per_stream):
                await call.write(create)

    result.bystander_ms["load + hostile"] = await _with_writer(bench, args.rate, open_watchers)
    # The slow watchers' history goes: each must be cancelled with the compacted revision
    # or caught up, never left behind silently.
    status = await bench.kv.Range(pb.RangeRequest(key=BYSTANDER_KEY), timeout=TIMEOUT)
    rev = status.header.revision
    await bench.kv.Compact(pb.CompactionRequest(revision=rev), timeout=TIMEOUT)
    outcome = {"cancelled (compacted)": 0, "caught up": 0, "no answer": 0}
    for call in calls[: min(5, len(calls))]:
        seen: set[int] = set()
        with anyio.move_on_after(20):
            while len(seen) < per_stream:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    break
                if resp.canceled and resp.compact_revision:
                    outcome["cancelled (compacted)"] += 1
                    seen.add(resp.watch_id)
                elif resp.header.revision >= rev and not resp.created:
                    outcome["caught up"] += 1
                    seen.add(resp.watch_id)
        outcome["no answer"] += per_stream - len(seen)
    result.notes["slow watchers read (5 streams)"] = outcome
    for call in calls:
        call.cancel()
    for c in channels:
        await c.close()


async def lease_storm(bench: Bench, args: argparse.Namespace, result: Result) -> None:
    result.bystander_ms["load alone"] = await _with_writer(bench, args.rate, _nothing)
    lease = rpc_pb2_grpc.LeaseStub(bench.channel)  # type: ignore[no-untyped-call]
    granted: list[int] = []
    abandoned: list[grpc.aio.Channel] = []

    async def storm() -> None:
        t0 = time.monotonic()
        todo = iter(range(args.leases))

        async def granter() -> None:
            for _ in todo:
                resp = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=TIMEOUT)
                granted.append(resp.ID)

        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(granter)
        result.notes["leases granted per second"] = round(len(granted) / (time.monotonic() - t0))
        for i in range(args.streams):
            if i % 50 == 0:
                abandoned.append(
                    grpc.aio.insecure_channel(bench.endpoint, options=[(_OWN_POOL, 1)])
                )
            stub = rpc_pb2_grpc.LeaseStub(abandoned[-1])  # type: ignore[no-untyped-call]
            call = stub.LeaseKeepAlive()
            await call.write(pb.LeaseKeepAliveRequest(ID=granted[i % len(granted)]))

    result.bystander_ms["load + hostile"] = await _with_writer(bench, args.rate, storm)
    for c in abandoned:
        await c.close()


async def connections(bench: Bench, args: argparse.Namespace, result: Result) -> None:
    result.bystander_ms["load alone"] = await _with_writer(bench, args.rate, _nothing)
    opened: list[grpc.aio.Channel] = []

    async def crowd() -> None:
        async def one() -> None:
            # A subchannel pool of its own: grpc would otherwise share one connection.
            ch = grpc.aio.insecure_channel(bench.endpoint, options=[(_OWN_POOL, 1)])
            opened.append(ch)
            kv = rpc_pb2_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
            await kv.Range(pb.RangeRequest(key=BYSTANDER_KEY), timeout=60)

        async with anyio.create_task_group() as tg:
            for _ in range(args.connections):
                tg.start_soon(one)

    result.bystander_ms["load + hostile"] = await _with_writer(bench, args.rate, crowd)
    result.notes["client connections the member holds"] = _sockets(bench.pid)
    for ch in opened:
        await ch.close()


async def _outcome(call: Awaitable[object], describe: Callable[[object], str]) -> str:
    """What one big request got: a description of the answer, or etcd's status and message."""
    t0 = time.monotonic()
    try:
        resp = await call
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {error.details()} ({time.monotonic() - t0:.2f} s)"
    return f"ok, {describe(resp)} ({time.monotonic() - t0:.2f} s)"


async def big_requests(bench: Bench, args: argparse.Namespace, result: Result) -> None:
    """The load limits: ``--count`` keys under one prefix read with and without a limit,
    ``--count`` leases, a transaction of 128 puts of 1 MiB in all and ones past etcd's
    limits; each must work or fail with etcd's error while the bystander is served."""
    result.bystander_ms["load alone"] = await _with_writer(bench, args.rate, _nothing)
    # A client that takes answers of any size (as etcdctl's does).
    big = grpc.aio.insecure_channel(
        bench.endpoint, options=[(_OWN_POOL, 1), ("grpc.max_receive_message_length", -1)]
    )
    kv = rpc_pb2_grpc.KVStub(big)  # type: ignore[no-untyped-call]
    lease = rpc_pb2_grpc.LeaseStub(big)  # type: ignore[no-untyped-call]
    notes = result.notes
    prefix, prefix_end = b"/big/", b"/big0"

    def puts(n: int, size: int, first: int = 0) -> pb.TxnRequest:
        return pb.TxnRequest(
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"%08d" % i, value=b"v" * size))
                for i in range(first, first + n)
            ]
        )

    def described_kvs(resp: object) -> str:
        assert isinstance(resp, pb.RangeResponse)
        return f"{len(resp.kvs)} kvs of {resp.count}, {resp.ByteSize() / 2**20:.1f} MiB"

    async def load() -> None:
        t0 = time.monotonic()
        sem = anyio.Semaphore(8)

        async def batch(first: int) -> None:
            async with sem:
                await kv.Txn(puts(min(128, args.count - first), 64, first), timeout=60)

        async with anyio.create_task_group() as tg:
            for first in range(0, args.count, 128):
                tg.start_soon(batch, first)
        notes[f"{args.count} keys written in 128-put txns"] = f"{time.monotonic() - t0:.1f} s"
        whole = pb.RangeRequest(key=prefix, range_end=prefix_end)
        notes["range, no limit"] = await _outcome(kv.Range(whole, timeout=60), described_kvs)
        limited = pb.RangeRequest(key=prefix, range_end=prefix_end, limit=1000)
        notes["range, limit 1000"] = await _outcome(kv.Range(limited, timeout=60), described_kvs)
        counted = pb.RangeRequest(key=prefix, range_end=prefix_end, count_only=True)
        notes["range, count only"] = await _outcome(kv.Range(counted, timeout=60), described_kvs)
        # 128 puts of 8 KiB less their keys' and framing's share: about 1 MiB in all.
        one_mib = puts(128, 8 * 1024 - 40)
        notes[f"txn, 128 puts, {one_mib.ByteSize() / 2**20:.2f} MiB"] = await _outcome(
            kv.Txn(one_mib, timeout=60), lambda r: "applied"
        )
        notes["txn, 129 puts"] = await _outcome(kv.Txn(puts(129, 8), timeout=60), str)
        for mib in (1.8, 2.5):
            request = puts(128, int(mib * 2**20 / 128))
            notes[f"txn, {request.ByteSize() / 2**20:.1f} MiB"] = await _outcome(
                kv.Txn(request, timeout=60), str
            )
        t0 = time.monotonic()
        todo = iter(range(args.count))

        async def granter() -> None:
            for _ in todo:
                await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=60)

        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(granter)
        notes[f"{args.count} leases granted"] = f"{time.monotonic() - t0:.1f} s"
        listed = await lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=60)
        notes["leases listed"] = len(listed.leases)

    try:
        result.bystander_ms["load + hostile"] = await _while_measured(bench, args.rate, load)
    finally:
        await big.close()


async def _while_measured(
    bench: Bench, rate: float, body: Callable[[], Awaitable[None]]
) -> tuple[float, float]:
    """The bystander's latency while ``body`` runs (and the writer puts)."""
    stop = anyio.Event()
    took: list[float] = []
    async with anyio.create_task_group() as tg:

        async def write() -> None:
            await bench.writer(rate, stop)

        async def measure() -> None:
            took.extend(await bench.bystander_samples(stop.is_set))

        tg.start_soon(write)
        tg.start_soon(measure)
        await body()
        stop.set()
    return _pct(took, 0.5), _pct(took, 0.99)


async def _nothing() -> None:
    return None


MODES = {
    "watch-fanout": watch_fanout,
    "lease-storm": lease_storm,
    "connections": connections,
    "big-requests": big_requests,
}


async def _leader_of(cluster: Cluster) -> int:
    for _ in range(100):
        for i, ep in enumerate(cluster.endpoints):
            async with grpc.aio.insecure_channel(ep) as ch:
                m = rpc_pb2_grpc.MaintenanceStub(ch)  # type: ignore[no-untyped-call]
                st = await m.Status(pb.StatusRequest(), timeout=TIMEOUT)
                if st.leader == st.header.member_id:
                    return i
        await anyio.sleep(0.1)
    raise RuntimeError("no leader")


async def _terms(cluster: Cluster) -> set[int]:
    terms = set()
    for ep in cluster.endpoints:
        async with grpc.aio.insecure_channel(ep) as ch:
            m = rpc_pb2_grpc.MaintenanceStub(ch)  # type: ignore[no-untyped-call]
            terms.add((await m.Status(pb.StatusRequest(), timeout=TIMEOUT)).raftTerm)
    return terms


async def measure(cluster: Cluster, target: str, args: argparse.Namespace) -> Result:
    """One mode against one started cluster."""
    result = Result(target)
    bench = Bench(cluster, await _leader_of(cluster))
    terms = await _terms(cluster)
    try:
        result.bystander_ms["quiet"] = await bench.bystander(PHASE_SECONDS)
        result.rss_mib["before"] = rss_mib(bench.pid)
        async with anyio.create_task_group() as tg:
            tg.start_soon(bench.sample_rss)
            await MODES[args.mode](bench, args, result)
            tg.cancel_scope.cancel()
        result.rss_mib["peak"] = bench.peak
        result.rss_mib["after"] = rss_mib(bench.pid)
        after = await _terms(cluster)
        result.leader_changes = max(after) - max(terms)
    finally:
        await bench.close()
    return result


def _cluster(target: str, root: Path) -> Cluster:
    return KVCluster(root=root, size=3) if target == "kvstore" else EtcdCluster(root=root, size=3)


async def _run_all(args: argparse.Namespace, root: Path) -> AsyncIterator[Result]:
    for target in args.targets.split(","):
        cluster = _cluster(target, root / target)
        cluster.start()
        try:
            yield await measure(cluster, target, args)
        finally:
            cluster.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watchers", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=100, help="watch or keep-alive streams")
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200, help="honest puts per second")
    parser.add_argument(
        "--count", type=int, default=100_000, help="keys and leases of --mode big-requests"
    )


def print_results(results: list[Result]) -> None:
    for r in results:
        print(f"== {r.target}")
        print("  member RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in r.rss_mib.items()))
        for phase, (p50, p99) in r.bystander_ms.items():
            print(f"  bystander read+put, {phase:15} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
        print(f"  leader changes: {r.leader_changes}")
        for k, v in r.notes.items():
            print(f"  {k}: {v}")


def run(args: argparse.Namespace) -> list[Result]:
    async def main() -> list[Result]:
        with tempfile.TemporaryDirectory(prefix="kvbench-hostile-") as tmp:
            return [r async for r in _run_all(args, Path(tmp))]

    return anyio.run(main)
