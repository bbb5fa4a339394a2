"""``--wal-segment-size``: a member cuts its WAL into segments of that size, preallocates
no more than that per segment, and recovers every write from the segments after a kill."""

from __future__ import annotations

from pathlib import Path

from kvstore.client import Client
from kvstore.local.cluster import KVCluster

SEGMENT_BYTES = 1024 * 1024
VALUE = b"v" * (100 * 1024)
WRITES = 40
"""About 4 MiB of values: the WAL must roll over at least three times."""


async def test_small_segments_roll_over_and_recover_after_a_kill(tmp_path: Path) -> None:
    cluster = KVCluster(root=tmp_path, size=1, extra_args=[f"--wal-segment-size={SEGMENT_BYTES}"])
    cluster.start()
    try:
        async with Client(cluster.endpoints) as client:
            for i in range(WRITES):
                await client.put(b"seg/%02d" % i, VALUE + b"%02d" % i, timeout=30)
        wal_dir = cluster.members[0].data_dir / "member" / "wal"
        segments = sorted(wal_dir.glob("*.wal"))
        assert len(segments) >= 4, [s.name for s in segments]
        # Preallocation follows the flag: no segment takes much more room than one more
        # frame past the limit (with 64 MiB segments each would take 64 MiB).
        for segment in segments:
            assert segment.stat().st_blocks * 512 <= SEGMENT_BYTES + 2 * len(VALUE), segment
        cluster.kill(0)
        cluster.restart(0)
        async with Client(cluster.endpoints) as client:
            got = await client.get(b"seg/", b"seg0", timeout=30)
        assert [kv.value for kv in got.kvs] == [VALUE + b"%02d" % i for i in range(WRITES)]
    finally:
        cluster.stop()
