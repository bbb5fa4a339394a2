"""The work queue: client-go's dedup / processing / rate-limit semantics."""

from __future__ import annotations

import anyio
import pytest

from controllers.workqueue import ExponentialBackoff, ShutDown, WorkQueue


async def test_duplicates_are_queued_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for item in ("a", "b", "a", "a", "c", "b"):
        queue.add(item)
    assert len(queue) == 3
    assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]


async def test_item_being_processed_is_not_handed_out_twice() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")  # re-added while processing: waits for done()
    assert len(queue) == 0
    with anyio.move_on_after(0.05) as scope:
        await queue.get()
    assert scope.cancelled_caught
    queue.done("a")
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0


async def test_done_without_readd_drops_the_item() -> None:
    queue: WorkQueue[int] = WorkQueue()
    queue.add(1)
    item = await queue.get()
    queue.done(item)
    queue.add(2)
    assert await queue.get() == 2


async def test_get_waits_for_an_add() -> None:
    queue: WorkQueue[str] = WorkQueue()
    got: list[str] = []

    async def consumer() -> None:
        got.append(await queue.get())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        queue.add("x")
    assert got == ["x"]


def test_backoff_doubles_per_item_and_is_capped() -> None:
    limiter: ExponentialBackoff[str] = ExponentialBackoff(base=0.01, max_delay=0.05)
    assert [limiter.when("a") for _ in range(5)] == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert limiter.when("b") == 0.01  # per item
    assert limiter.num_requeues("a") == 5
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == 0.01


async def test_rate_limited_add_is_delayed_by_the_backoff() -> None:
    queue: WorkQueue[str] = WorkQueue(ExponentialBackoff(base=0.1, max_delay=1.0))
    queue.add_rate_limited("a")  # 0.1 s
    queue.add_rate_limited("a")  # 0.2 s, the same item: handed out once
    assert queue.num_requeues("a") == 2
    started = anyio.current_time()
    with anyio.fail_after(5):
        assert await queue.get() == "a"
    assert anyio.current_time() - started >= 0.09
    queue.done("a")
    with anyio.fail_after(5):
        assert await queue.get() == "a"  # the second delayed add arrives too
    assert anyio.current_time() - started >= 0.19
    queue.done("a")
    queue.forget("a")
    assert queue.num_requeues("a") == 0


async def test_delayed_item_already_queued_is_not_duplicated() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add_after("a", 0.01)
    assert await queue.get() == "a"
    # The delayed add arrives while "a" is processing: it is requeued after done().
    with anyio.move_on_after(0.2):
        await queue.get()
    queue.done("a")
    with anyio.fail_after(5):
        assert await queue.get() == "a"


async def test_shutdown_releases_waiting_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()

    async def worker() -> None:
        with pytest.raises(ShutDown):
            await queue.get()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker)
        tasks.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        queue.shut_down()
    queue.add("late")
    assert len(queue) == 0
