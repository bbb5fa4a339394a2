"""KeyIndex.get against the history it was given: every revision of a key with many
lives (puts and deletes), including ones before it existed and between its lives."""

from __future__ import annotations

import random

from kvstore.mvcc.index import KeyIndex


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
