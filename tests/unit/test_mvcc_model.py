"""Model-based test: random operation sequences against a tiny reference model of etcd's
KV semantics (revisions, versions, ranges, compaction, leases), checked field by field."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import CompactedError, FutureRevError, LeaseNotFoundError, RequestError
from kvstore.mvcc import MVCCStore, open_store

KVT = tuple[bytes, bytes, int, int, int, int]  # key, value, create, mod, version, lease
KEYS = [b"k%d" % i for i in range(8)] + [b"p/1", b"p/2", b"p/3"]


@dataclass
class Model:
    """Every revision's full state, kept naively: obviously right, slow, fine for tests."""

    rev: int = 1
    compacted: int = -1
    history: dict[int, dict[bytes, KVT]] = field(default_factory=lambda: {1: {}})
    leases: dict[int, set[bytes]] = field(default_factory=dict)

    def state(self) -> dict[bytes, KVT]:
        return self.history[self.rev]

    def _commit(self, new: dict[bytes, KVT]) -> None:
        self.rev += 1
        self.history[self.rev] = new

    def put(self, key: bytes, value: bytes, lease: int) -> int:
        if lease and lease not in self.leases:
            raise LeaseNotFoundError()
        cur = self.state()
        new = dict(cur)
        old = cur.get(key)
        if old is not None and old[5]:
            self.leases[old[5]].discard(key)
        if lease:
            self.leases[lease].add(key)
        rev = self.rev + 1
        new[key] = (key, value, old[2] if old else rev, rev, old[4] + 1 if old else 1, lease)
        self._commit(new)
        return self.rev

    @staticmethod
    def _in(key: bytes, start: bytes, end: bytes | None) -> bool:
        if end is None:
            return key == start
        if end == b"":
            return key >= start
        return start <= key < end

    def delete(self, start: bytes, end: bytes | None) -> int:
        cur = self.state()
        gone = [k for k in cur if self._in(k, start, end)]
        if not gone:
            return 0
        new = {k: v for k, v in cur.items() if k not in gone}
        for k in gone:
            if cur[k][5]:
                self.leases[cur[k][5]].discard(k)
        self._commit(new)
        return len(gone)

    def range(self, start: bytes, end: bytes | None, rev: int, limit: int) -> tuple[list[KVT], int]:
        if rev > self.rev:
            raise FutureRevError()
        if rev <= 0:
            rev = self.rev
        if rev < self.compacted:
            raise CompactedError()
        snap = self.history[rev]
        found = sorted(v for k, v in snap.items() if self._in(k, start, end))
        return (found[:limit] if limit else found), len(found)

    def compact(self, rev: int) -> None:
        if rev <= self.compacted:
            raise CompactedError()
        if rev > self.rev:
            raise FutureRevError()
        self.compacted = rev

    def revoke(self, lease: int) -> None:
        if lease not in self.leases:
            raise LeaseNotFoundError()
        keys = sorted(self.leases.pop(lease))
        if keys:
            cur = self.state()
            self._commit({k: v for k, v in cur.items() if k not in keys})


def _end_of(r: random.Random, key: bytes) -> tuple[bytes, bytes | None]:
    """(range_end on the wire, the model's end)."""
    x = r.random()
    if x < 0.4:
        return b"", None
    if x < 0.6:
        return b"\x00", b""
    e = r.choice(KEYS)
    return e, e


def _tuple(kv: Any) -> KVT:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def run_model(store: MVCCStore, seed: int, n_ops: int) -> Model:
    r = random.Random(seed)
    apply: Any = store.apply  # responses are checked field by field below
    m = Model()
    for idx in range(1, n_ops + 1):
        x = r.random()
        want: Any
        got: Any
        if x < 0.4:
            key, value = r.choice(KEYS), b"v%d" % r.randint(0, 99)
            lease = r.choice([0, 0, 0, 7, 8, 9])
            try:
                want = m.put(key, value, lease)
            except RequestError as e:
                want = e
            try:
                got = apply(idx, rpc_pb2.PutRequest(key=key, value=value, lease=lease))
                got = got.header.revision
            except RequestError as e:
                got = e
        elif x < 0.55:
            key = r.choice(KEYS)
            wire_end, end = _end_of(r, key)
            want = (m.delete(key, end), m.rev)
            resp: Any = apply(idx, rpc_pb2.DeleteRangeRequest(key=key, range_end=wire_end))
            got = (resp.deleted, resp.header.revision)
        elif x < 0.9:
            key = r.choice(KEYS)
            wire_end, end = _end_of(r, key)
            rev = r.choice([0, 0, r.randint(1, m.rev + 2)])
            limit = r.choice([0, 0, 1, 3])
            try:
                kvs, count = m.range(key, end, rev, limit)
                want = (kvs, count, limit > 0 and count > limit, m.rev)
            except RequestError as e:
                want = e
            try:
                resp = apply(
                    idx,
                    rpc_pb2.RangeRequest(key=key, range_end=wire_end, revision=rev, limit=limit),
                )
                got = (
                    [_tuple(kv) for kv in resp.kvs],
                    resp.count,
                    resp.more,
                    resp.header.revision,
                )
            except RequestError as e:
                got = e
        elif x < 0.94:
            rev = r.randint(max(1, m.compacted - 1), m.rev + 1)
            try:
                m.compact(rev)
                want = m.rev
            except RequestError as e:
                want = e
            try:
                got = apply(idx, rpc_pb2.CompactionRequest(revision=rev)).header.revision
            except RequestError as e:
                got = e
        elif x < 0.97:
            lease = r.choice([7, 8, 9])
            if lease in m.leases:
                want = "exists"
            else:
                m.leases[lease] = set()
                want = lease
            try:
                got = apply(idx, rpc_pb2.LeaseGrantRequest(ID=lease, TTL=60)).ID
            except RequestError:
                got = "exists"
        else:
            lease = r.choice([7, 8, 9])
            try:
                m.revoke(lease)
                want = m.rev
            except RequestError as e:
                want = e
            try:
                got = apply(idx, rpc_pb2.LeaseRevokeRequest(ID=lease)).header.revision
            except RequestError as e:
                got = e
        assert got == want, (idx, x, want, got)
        assert store.current_revision == m.rev
        if idx % 37 == 0:
            store.commit()
    store.commit()
    return m


@pytest.mark.parametrize(("seed", "compact_batch"), [(1, 10_000), (2, 10_000), (3, 2), (4, 1)])
def test_model(tmp_path: Path, seed: int, compact_batch: int) -> None:
    """compact_batch 1-2 keeps physical compaction pending across many commits."""
    store = open_store(tmp_path / "s", compact_batch=compact_batch)[0]
    try:
        m = run_model(store, seed, 1500)
        # Every revision still visible is identical to the model, key by key.
        for rev in range(max(1, m.compacted), m.rev + 1):
            resp = store.range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev))
            assert [_tuple(kv) for kv in resp.kvs] == sorted(m.history[rev].values()), rev
        for lease, keys in m.leases.items():
            assert store.lessor.keys_of(lease) == sorted(keys)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_model_long(tmp_path: Path, seed: int) -> None:
    store = open_store(tmp_path / "s", compact_batch=1 + seed % 3 * 5000)[0]
    try:
        run_model(store, seed, 10000)
    finally:
        store.close()
