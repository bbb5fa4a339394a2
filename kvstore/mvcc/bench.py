"""Micro-benchmarks of the MVCC apply path: ``python -m kvstore.mvcc.bench``.

Measures (single thread, LMDB in a temporary directory):
  * put apply rate, committing every N entries (the driver's batch size);
  * range over 1,000 keys (full values, keys_only, count_only);
  * txn apply rate (compare + 2 puts);
  * watch fan-out: one put delivered to 1,000 watchers, and the consumer side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.mvcc import open_store


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def bench_puts(root: Path, n: int, commit_every: int, value_size: int) -> float:
    store, _ = open_store(root / f"puts-{commit_every}")
    value = b"x" * value_size
    reqs = [rpc_pb2.PutRequest(key=b"key/%06d" % (i % 10_000), value=value) for i in range(n)]

    def run() -> int:
        for i, req in enumerate(reqs, 1):
            store.apply(i, req)
            if i % commit_every == 0:
                store.commit()
        store.commit()
        return n

    dt, _ = _timed(run)
    store.close()
    return n / dt


def bench_txns(root: Path, n: int, commit_every: int) -> float:
    store, _ = open_store(root / "txns")
    reqs = []
    for i in range(n):
        t = rpc_pb2.TxnRequest()
        k = b"lock/%04d" % (i % 1000)
        t.compare.add(key=k, target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.GREATER)
        t.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=k, value=b"held"))
        t.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=k + b"/x", value=b"1"))
        t.failure.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=k, value=b"new"))
        reqs.append(t)

    def run() -> int:
        for i, req in enumerate(reqs, 1):
            store.apply(i, req)
            if i % commit_every == 0:
                store.commit()
        store.commit()
        return n

    dt, _ = _timed(run)
    store.close()
    return n / dt


def bench_range(root: Path, keys: int, reps: int) -> dict[str, float]:
    store, _ = open_store(root / "range")
    for i in range(keys):
        store.apply(i + 1, rpc_pb2.PutRequest(key=b"r/%05d" % i, value=b"v" * 100))
    store.commit()
    out: dict[str, float] = {}
    for name, extra in (
        ("full", {}),
        ("keys_only", {"keys_only": True}),
        ("count_only", {"count_only": True}),
        ("limit=10", {"limit": 10}),
    ):
        req = rpc_pb2.RangeRequest(key=b"r/", range_end=b"r0", **extra)

        def run(req: rpc_pb2.RangeRequest = req) -> int:
            for _ in range(reps):
                store.range(req)
            return reps

        dt, _ = _timed(run)
        out[name] = dt / reps * 1e3
    store.close()
    return out


def bench_watch(root: Path, watchers: int, puts: int) -> tuple[float, float]:
    store, hub = open_store(root / "watch", watch_queue_size=puts + 1)
    streams = []
    for _ in range(watchers):
        s = hub.new_stream()
        s.watch(rpc_pb2.WatchCreateRequest(key=b"hot"))
        s.drain()
        streams.append(s)

    def notify() -> int:
        for i in range(puts):
            store.apply(i + 1, rpc_pb2.PutRequest(key=b"hot", value=b"v"))
        return puts

    dt_apply, _ = _timed(notify)

    def consume() -> int:
        n = 0
        for s in streams:
            n += sum(len(r.events) for r in s.drain())
        return n

    dt_drain, delivered = _timed(consume)
    assert delivered == watchers * puts, delivered
    store.close()
    return dt_apply / puts * 1e3, delivered / dt_drain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--puts", type=int, default=20_000)
    parser.add_argument("--value-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for every in (1, 100, 1000):
            n = args.puts if every > 1 else min(args.puts, 2000)
            rate = bench_puts(root, n, every, args.value_size)
            print(f"put apply  commit every {every:>4}: {rate:10,.0f} puts/s  ({n} puts)")
        rate = bench_txns(root, 10_000, 1000)
        print(f"txn apply  commit every 1000: {rate:10,.0f} txns/s  (compare + 2 puts)")
        for name, ms in bench_range(root, 1000, 200).items():
            print(f"range 1000 keys {name:>10}: {ms:8.3f} ms/range")
        per_put_ms, rate = bench_watch(root, 1000, 100)
        print(
            f"watch fan-out 1000 watchers: {per_put_ms:8.3f} ms per put (apply+notify), "
            f"consumer side {rate:,.0f} events/s"
        )


if __name__ == "__main__":
    main()
