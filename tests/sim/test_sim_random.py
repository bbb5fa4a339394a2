"""Randomised fault-injection runs (600 seeds x 2,000 events by default)."""

from __future__ import annotations

import pytest

from tests.sim.cluster import SafetyError, run_seed
from tests.sim.mutants import mutant

SEEDS = 1000
STEPS = 2000
CHUNK = 50


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_random_seeds(start: int) -> None:
    for seed in range(start, start + CHUNK):
        try:
            run_seed(seed, steps=STEPS)
        except Exception as exc:
            sim = getattr(exc, "sim", None)
            tail = sim.transcript() if sim is not None else ""
            pytest.fail(
                f"seed {seed}: {type(exc).__name__}: {exc}\n"
                f"reproduce: python -m tests.sim.campaign --seeds 1 --start {seed} "
                f"--steps {STEPS} --verbose\n{tail}"
            )


@pytest.mark.parametrize("seed", [0, 1, 2, 11])
def test_same_seed_same_transcript(seed: int) -> None:
    a = run_seed(seed, steps=1500, trace_len=None).transcript()
    b = run_seed(seed, steps=1500, trace_len=None).transcript()
    assert a == b
    assert len(a.splitlines()) > 1500
    c = run_seed(seed + 3, steps=1500, trace_len=None).transcript()  # same size, new seed
    assert a != c


def test_checkers_catch_commit_of_old_term_entries() -> None:
    """Mutation test: counting replicas of older-term entries is caught (seed 576)."""
    with mutant("commit-any-term"), pytest.raises(SafetyError, match="committed index"):
        run_seed(576, steps=STEPS)
    run_seed(576, steps=STEPS)  # and the real rule passes the same seed


def test_checkers_catch_reads_without_leadership_confirmation() -> None:
    """Mutation test: a read index served without a heartbeat quorum is caught."""
    with mutant("read-without-quorum"), pytest.raises(SafetyError, match="read index"):
        run_seed(1, steps=STEPS)
    run_seed(1, steps=STEPS)
