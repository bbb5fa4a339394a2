"""The lock workload on a real store: holders pause past their tenure, the store's fence
refuses their late writes, and the lock checker passes the history (and rejects it once
a late write is made to look accepted)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from chaos.checkers import Event, check_locks
from chaos.runner import lock_history
from chaos.workloads import (
    LOCK_BACKENDS,
    LOCK_DATA,
    PREFIX,
    LockWorkload,
    read_history,
)
from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster


@pytest.fixture(params=["etcd", "kvstore"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdCluster | KVCluster]:
    kind = {"etcd": EtcdCluster, "kvstore": KVCluster}[request.param]
    cluster = kind(root=tmp_path / request.param, size=1)
    cluster.start()
    yield cluster
    cluster.stop()


async def _run_until_fenced(locks: LockWorkload, deadline: float) -> None:
    """Run the contenders until the fence refused a late write and some writes were accepted."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(locks.run, stop)
        while time.monotonic() < deadline:
            if locks.stalled_writes_refused >= 1 and len(locks.guarded_acks) >= 3:
                break
            await anyio.sleep(0.2)
        stop.set()


def _late_write_made_accepted(history: list[Event], tokens_are_create_revisions: bool) -> bool:
    """Rewrite the first write of a later tenure to carry the previous tenure's token."""
    tenures: list[tuple[int, str]] = []  # (token, holder)
    for i, e in enumerate(history):
        if e.key != LOCK_DATA:
            if (
                e.type == "put"
                and e.value
                and (not tokens_are_create_revisions or e.create_revision == e.revision)
            ):
                tenures.append((e.revision, e.value))
            continue
        if len(tenures) >= 2 and json.loads(e.value)["token"] == tenures[-1][0]:
            token, holder = tenures[-2]
            forged = json.dumps({"token": token, "who": holder, "seq": 1})
            history[i] = Event(e.type, e.key, forged, e.revision, e.create_revision)
            return True
    return False


@pytest.mark.parametrize("backend", ["election", pytest.param("txn", marks=pytest.mark.slow)])
async def test_paused_holders_are_fenced_off(store: EtcdCluster | KVCluster, backend: str) -> None:
    locks = LockWorkload(
        store.endpoints,
        random.Random(8),
        contenders=3,
        stall_probability=2.5,  # every other guarded write follows a pause of its holder
        backend=LOCK_BACKENDS[backend](),
    )
    await _run_until_fenced(locks, time.monotonic() + 90)
    assert locks.stalled_writes_refused >= 1, (locks.stalls, locks.acquisitions)
    assert len(locks.guarded_acks) >= 3

    async with Client(store.endpoints) as client:
        revision = int((await client.get("/")).header.revision)
    reference = await read_history(store.endpoints, PREFIX, 1, revision)
    history = await lock_history(store.endpoints, locks, reference, revision)
    create_model = locks.backend.tokens_are_create_revisions

    def check(events: list[Event]) -> list[str]:
        return check_locks(
            locks.backend.tenure_key,
            LOCK_DATA,
            events,
            locks.acquisitions,
            locks.guarded_acks,
            tokens_are_create_revisions=create_model,
        )

    assert check(history) == []
    assert len({token for _, token in locks.acquisitions}) >= 2  # the lock changed hands
    assert _late_write_made_accepted(history, create_model)
    assert any("while the holder's token was" in v for v in check(history))
