"""Long simulation campaigns: ``python -m tests.sim.campaign --seeds 100000``.

Runs seeds ``start .. start+seeds-1`` (cluster size rotates 3/5/7 with the seed
unless ``--nodes`` is given), optionally across processes. On the first failure it
prints a one-line reproduction command and the tail of that seed's transcript, and
exits with status 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import traceback

from tests.sim.cluster import run_seed
from tests.sim.mutants import MUTANTS, mutant

_MUTANT: str | None = None


def repro_command(seed: int, steps: int, nodes: int | None) -> str:
    cmd = f"python -m tests.sim.campaign --seeds 1 --start {seed} --steps {steps}"
    if nodes is not None:
        cmd += f" --nodes {nodes}"
    if _MUTANT:
        cmd += f" --mutant {_MUTANT}"
    return cmd + " --verbose"


def run_one(args: tuple[int, int, int | None, int]) -> tuple[int, str | None]:
    """Returns (seed, None) on success or (seed, failure report)."""
    seed, steps, nodes, trace_len = args
    try:
        run_seed(seed, steps=steps, nodes=nodes, trace_len=trace_len)
    except Exception as exc:  # any exception is a bug: report it with the transcript
        sim = getattr(exc, "sim", None)
        transcript = sim.transcript() if sim is not None else "(no transcript)"
        report = (
            f"FAIL seed={seed}: {type(exc).__name__}: {exc}\n"
            f"reproduce: {repro_command(seed, steps, nodes)}\n"
            f"--- last {trace_len} events ---\n{transcript}\n"
            f"--- traceback ---\n{traceback.format_exc()}"
        )
        return seed, report
    return seed, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1000, help="number of seeds to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--steps", type=int, default=2000, help="random events per seed")
    p.add_argument("--nodes", type=int, choices=(3, 5, 7), default=None)
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--trace", type=int, default=200, help="transcript lines on failure")
    p.add_argument("--verbose", action="store_true", help="print the full transcript")
    p.add_argument("--mutant", choices=sorted(MUTANTS), help="install a deliberate bug")
    a = p.parse_args(argv)
    if a.mutant:
        global _MUTANT
        _MUTANT = a.mutant
        with mutant(a.mutant):
            return _run(a)
    return _run(a)


def _run(a: argparse.Namespace) -> int:
    trace_len = 10**9 if a.verbose else a.trace
    work = [(s, a.steps, a.nodes, trace_len) for s in range(a.start, a.start + a.seeds)]
    t0 = time.monotonic()
    done = 0
    failed: str | None = None
    if a.jobs > 1:
        with multiprocessing.Pool(a.jobs) as pool:
            for _seed, report in pool.imap(run_one, work, chunksize=8):
                done += 1
                if report is not None:
                    failed = report
                    pool.terminate()
                    break
                if done % 1000 == 0:
                    print(f"{done} seeds ok ({time.monotonic() - t0:.0f}s)", flush=True)
    else:
        for item in work:
            _seed, report = run_one(item)
            done += 1
            if report is not None:
                failed = report
                break
            if a.verbose:
                sim = run_seed(item[0], steps=a.steps, nodes=a.nodes, trace_len=None)
                print(sim.transcript())
                print(f"stats: {sim.stats}")
            if done % 1000 == 0:
                print(f"{done} seeds ok ({time.monotonic() - t0:.0f}s)", flush=True)
    if failed is not None:
        print(failed)
        return 1
    print(f"OK: {done} seeds x {a.steps} steps in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
