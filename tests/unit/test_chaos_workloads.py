"""Workload plumbing: a worker that ends before the campaign does is noticed."""

from __future__ import annotations

import anyio

from chaos.workloads import run_watched


async def test_a_worker_ending_before_stop_is_noted() -> None:
    stop = anyio.Event()
    ended_early: list[str] = []
    first_ended = anyio.Event()

    async def ends_at_once() -> None:
        first_ended.set()

    async def loops_until_stop() -> None:
        await stop.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_watched, ends_at_once(), "early", stop, ended_early)
        tg.start_soon(run_watched, loops_until_stop(), "on time", stop, ended_early)
        with anyio.fail_after(10):
            await first_ended.wait()  # its end is noted in the same step
        stop.set()
    assert ended_early == ["early"]
