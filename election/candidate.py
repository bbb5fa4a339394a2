"""Announcing a contender: a LeaseCandidate key that lives as long as its process.

The lock record names only the holder; standbys leave no trace in the store.
As Kubernetes' coordinated leader election does with ``LeaseCandidate``
objects, each contender keeps one key per lock it contends for::

    /registry/leasecandidates/<namespace>/<lock>-<identity>
    {"apiVersion": "coordination.k8s.io/v1beta1", "kind": "LeaseCandidate",
     "metadata": {"name": "<lock>-<identity>", "namespace": "<namespace>"},
     "spec": {"leaseName": "<lock>", "renewTime": "..."}}

Unlike Kubernetes (whose candidates renew ``renewTime`` and are collected by
the API server), the key is attached to a store lease kept alive by the
contender: it vanishes by itself when the process dies, and at once when the
contender stops. Observers (the dashboard) list these keys to show the
standbys of each lock. Nothing in the election depends on them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math

import anyio

from election.config import Clock, ElectionConfig, SystemClock
from election.record import format_time
from kvstore.client import Client, EtcdError

log = logging.getLogger(__name__)

CANDIDATE_PREFIX = "/registry/leasecandidates/"
# Pause before announcing again after the store refused or the lease was lost.
RETRY_PAUSE = 1.0


def candidate_name(lock: str, identity: str) -> str:
    return f"{lock}-{identity}"


def candidate_key(namespace: str, lock: str, identity: str) -> str:
    return f"{CANDIDATE_PREFIX}{namespace}/{candidate_name(lock, identity)}"


def candidate_record(config: ElectionConfig, clock: Clock) -> bytes:
    name = candidate_name(config.name, config.identity)
    return json.dumps(
        {
            "apiVersion": "coordination.k8s.io/v1beta1",
            "kind": "LeaseCandidate",
            "metadata": {"name": name, "namespace": config.namespace},
            "spec": {"leaseName": config.name, "renewTime": format_time(clock.wall())},
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


async def announce_candidate(
    client: Client, config: ElectionConfig, *, clock: Clock | None = None
) -> None:
    """Keep this contender's LeaseCandidate key in the store until cancelled.

    The key's store lease has the lock's lease duration as TTL, so a dead
    process's candidacy disappears about as fast as its lock expires. On
    cancellation the lease is revoked, which deletes the key at once.
    """
    clock = clock or SystemClock()
    key = candidate_key(config.namespace, config.name, config.identity)
    ttl = max(2, math.ceil(config.lease_duration))
    while True:
        lease_id = 0
        try:
            lease_id = (await client.grant(ttl, timeout=config.retry_period)).ID
            await client.put(
                key, candidate_record(config, clock), lease=lease_id, timeout=config.retry_period
            )
            async with client.keepalive(lease_id) as keepalive:
                await keepalive.lost.wait()
            log.info("%s: candidacy lease %x lost; announcing again", config.identity, lease_id)
        except EtcdError as error:
            log.info("%s: announcing candidacy failed: %s", config.identity, error)
        finally:
            if lease_id:
                # A failed revoke is fine: the lease expires by itself.
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(config.retry_period),
                    contextlib.suppress(EtcdError),
                ):
                    await client.revoke(lease_id, timeout=config.retry_period)
        await anyio.sleep(RETRY_PAUSE)  # the store is failing over or refused; try again
