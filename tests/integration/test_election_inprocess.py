"""Elector behaviour observable in one process: health check, callbacks, guarded writes."""

from __future__ import annotations

import uuid

import anyio

from election import Callbacks, ElectionConfig, LeaderElector, Leadership, LeadershipLost
from election.config import SystemClock
from kvstore.client import Client
from kvstore.local.etcd import EtcdCluster


class SteppableClock(SystemClock):
    """The system clock plus an offset the test can advance (a process that was frozen)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.offset


async def test_health_check_and_loss_cancel_the_leader(etcd: EtcdCluster) -> None:
    name = f"inproc-{uuid.uuid4().hex[:8]}"
    config = ElectionConfig(
        name=name, namespace="tests", lease_duration=2, renew_deadline=1.5, retry_period=0.4
    )
    clock = SteppableClock()
    started = anyio.Event()
    leading_cancelled = anyio.Event()
    stopped = anyio.Event()
    seen_leaders: list[str] = []
    holder: list[Leadership] = []

    async def lead(leadership: Leadership) -> None:
        holder.append(leadership)
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            leading_cancelled.set()

    async with Client(etcd.endpoints) as client:
        elector = LeaderElector(
            client,
            config,
            Callbacks(lead, on_stopped_leading=stopped.set, on_new_leader=seen_leaders.append),
            clock=clock,
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(elector.run)
            with anyio.fail_after(20):
                await started.wait()
            assert elector.is_leader and elector.healthy()
            assert seen_leaders == [config.identity]
            leadership = holder[0]
            put = await leadership.put(f"/tests/{name}/work", "x")
            assert put.header.revision > leadership.token

            # Freeze-and-thaw: time jumps past the lease without a renewal.
            clock.offset = config.lease_duration + 1
            assert not elector.healthy(tolerance=0.5)
            try:
                await leadership.put(f"/tests/{name}/work", "late")
            except LeadershipLost:
                pass
            else:
                raise AssertionError("a write after the renew deadline must be refused locally")
            with anyio.fail_after(20):
                await leading_cancelled.wait()
                await stopped.wait()
            assert leadership.deposed and not elector.is_leader and elector.healthy()
        value = (await client.get(f"/tests/{name}/work")).kvs[0].value
        assert value == b"x"
