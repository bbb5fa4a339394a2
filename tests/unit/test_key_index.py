"""KeyIndex.get against the history it was given: every revision of a key with many
lives (puts and deletes), including ones before it existed and between its lives; the
tree index's live set against every key's history."""

from __future__ import annotations

import random

from kvstore.mvcc.index import LIVE_CHUNK_KEYS, KeyIndex, TreeIndex
from kvstore.mvcc.revision import Revision


def test_get_matches_the_history_at_every_revision() -> None:
    rng = random.Random(7)
    index = KeyIndex(b"k")
    # What get must answer at each revision: (modified, created, version) or None.
    truth: dict[int, tuple[tuple[int, int], tuple[int, int], int] | None] = {}
    state: tuple[tuple[int, int], tuple[int, int], int] | None = None
    rev = 1
    for _ in range(3000):
        rev += rng.choice((1, 1, 2, 5))
        for r in range(len(truth) + 1, rev):
            truth[r] = state
        if state is not None and rng.random() < 0.2:
            index.tombstone((rev, 0))
            state = None
        else:
            sub = rng.choice((0, 0, 1))
            index.put((rev, sub))
            created = state[1] if state is not None else (rev, sub)
            state = ((rev, sub), created, (state[2] if state is not None else 0) + 1)
        truth[rev] = state
    assert len(index.generations) > 300  # many lives
    for at_rev, want in truth.items():
        assert index.get(at_rev) == want, at_rev
    assert index.get(0) is None
    assert index.get(rev + 100) == state


def _truth(
    index: TreeIndex, key: bytes, end: bytes | None, at_rev: int
) -> list[tuple[bytes, Revision]]:
    """Every key's history asked directly: what the live set must agree with."""
    return list(index._range_at(key, end, at_rev))


def test_reads_of_the_current_state_agree_with_every_key_history() -> None:
    rng = random.Random(11)
    keys = [b"k%03d" % i for i in range(200)]
    index = TreeIndex()
    live: set[bytes] = set()
    for rev in range(2, 6000):
        key = rng.choice(keys)
        if key in live and rng.random() < 0.45:
            index.tombstone(key, (rev, 0))
            live.discard(key)
        else:
            index.put(key, (rev, 0))
            live.add(key)
        if rev % 97 == 0:
            start = rng.choice(keys)
            for end in (None, b"", rng.choice(keys), start, b"k"):
                got = list(index.range(start, end, rev))
                assert got == _truth(index, start, end, rev), (start, end)
                assert index.count(start, end, rev) == len(got), (start, end)
            assert [k for k, _ in index.range(b"", b"", rev)] == sorted(live)
    # Rebuilt as a store does on open: the same answers.
    rebuilt = TreeIndex()
    for key in keys:
        ki = index.key_index(key)
        if ki is not None and ki.latest() is not None:
            g = ki.generations[-1]
            rebuilt.restore(key, g.created, g.revs[-1], g.ver)
    rebuilt.finish_restore()
    assert list(rebuilt.range(b"", b"", rev)) == list(index.range(b"", b"", rev))
    assert rebuilt.count(b"k1", b"k2", rev) == index.count(b"k1", b"k2", rev) > 0


def test_keys_deleted_while_a_range_is_walked_leave_the_rest_of_it_whole() -> None:
    # A DeleteRange applied in slices tombstones the keys it was given before it asks
    # for more: the walk over the live set must neither skip nor repeat a key.
    index = TreeIndex()
    keys = [b"p/%05d" % i for i in range(3 * LIVE_CHUNK_KEYS + 17)]
    for rev, key in enumerate(keys, 2):
        index.put(key, (rev, 0))
    index.put(b"q", (len(keys) + 2, 0))
    deleting = len(keys) + 3
    walked = []
    for n, (key, _) in enumerate(index.range(b"p/", b"p0", deleting - 1)):
        walked.append(key)
        index.tombstone(key, (deleting, n))
    assert walked == keys
    assert index.count(b"p/", b"p0", deleting) == 0
    assert [k for k, _ in index.range(b"", b"", deleting)] == [b"q"]
    # History still answers reads at the revision before the delete.
    assert index.count(b"p/", b"p0", deleting - 1) == len(keys)
