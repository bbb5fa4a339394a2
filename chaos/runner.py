"""A chaos campaign: start a cluster, run workloads under a fault schedule, check, report."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import anyio

from chaos import linearizability
from chaos.campaign import CampaignConfig, CampaignResult
from chaos.checkers import (
    Event,
    LeaseLog,
    check_durability,
    check_lease,
    check_locks,
    check_reference,
    check_resume,
    check_watch,
    lagging_progress_notifies,
    unconfirmed_lease_reads,
)
from chaos.cluster import ClusterUnderTest, ProcessClusterUnderTest
from chaos.faults import FaultInjector, LeaderMonitor, schedule
from chaos.history import OK, History, Op
from chaos.workloads import (
    LOCK_BACKENDS,
    LOCK_DATA,
    PREFIX,
    LeaseWorkload,
    LockWorkload,
    MultiKeyWorkload,
    RegisterWorkload,
    WatchWorkload,
    read_history,
    run_watched,
)
from kvstore.client import Client, EtcdError

log = logging.getLogger(__name__)

# Periodic progress notifications for the watchers (the default is 10 minutes);
# both stores take etcd's flag.
MEMBER_EXTRA_ARGS = ["--experimental-watch-progress-notify-interval=500ms"]

# Clusters started and not yet stopped, so a CLI interrupted by a signal can
# still stop them (see ``stop_live_clusters``).
_LIVE: set[ClusterUnderTest] = set()


# With failpoints our members take a snapshot every this many entries, so the snapshot
# and WAL-release points are reached within a short campaign.
FAILPOINT_SNAPSHOT_COUNT = 1000


def member_args(config: CampaignConfig) -> list[str]:
    """The extra flags of every member process in ``config``'s campaign."""
    args = list(MEMBER_EXTRA_ARGS)
    if config.failpoints and config.target == "kvstore":
        args.append(f"--snapshot-count={FAILPOINT_SNAPSHOT_COUNT}")
    args.extend(config.member_flags)
    return args


def stop_live_clusters() -> None:
    """Stop every cluster a campaign started and has not stopped yet (blocking)."""
    for cluster in list(_LIVE):
        try:
            cluster.stop()
        finally:
            _LIVE.discard(cluster)


# Documented bound: a lease that is no longer renewed is seen gone within
# TTL + this many seconds (faults in between can delay expiry: it needs a leader).
LEASE_EXPIRY_BOUND = 25.0


async def _final_state(
    cluster: ClusterUnderTest, history: History, keys: list[str]
) -> tuple[int, dict[str, str | None], dict[str, tuple[int, int]]]:
    """Final linearizable reads (recorded in the history) and HashKV of every member."""
    final: dict[str, str | None] = {}
    async with Client(cluster.endpoints, default_timeout=10.0) as client:
        for key in keys:
            op = history.invoke("final", "get", key)
            resp = await client.get(key)
            value = resp.kvs[0].value.decode() if resp.kvs else None
            history.complete(op, OK, value, int(resp.header.revision))
            final[key] = value
        revision = int((await client.get("/")).header.revision)
        hashes: dict[str, tuple[int, int]] = {}
        for i in cluster.members:
            endpoint = cluster.endpoints[i]
            for _ in range(50):  # a restarted member may still be catching up
                try:
                    resp_h = await client.hash_kv(endpoint, revision, timeout=5.0)
                    hashes[f"m{i}"] = (revision, int(resp_h.hash))
                    break
                except EtcdError as error:
                    log.info("hash_kv m%d: %s", i, error)
                    await anyio.sleep(0.2)
    return revision, final, hashes


def _lease_observations_from_watch(leases: list[LeaseLog], watch: WatchWorkload) -> None:
    by_key = {key: lease for lease in leases for key in lease.keys}
    for wlog in watch.logs:
        for batch in wlog.batches:
            for e in batch.events:
                if e.type == "delete" and e.key in by_key:
                    by_key[e.key].gone.append((batch.received, f"delete event ({wlog.name})"))


async def _most_complete_history(endpoints: list[str], revision: int) -> list[Event]:
    """The committed history through ``revision``, from the first member that gives all
    of it in time, else the longest any gave (a member still replaying its log, or one
    that lost writes, gives less; the checkers then report what is missing)."""
    best: list[Event] = []
    for first in range(len(endpoints)):
        order = endpoints[first:] + endpoints[:first]
        events = await read_history(order, PREFIX, 1, revision)
        if events and events[-1].revision >= revision:
            return events
        if len(events) > len(best):
            best = events
    return best


async def run_campaign(
    config: CampaignConfig,
    cluster_factory: Callable[[Path, int], ClusterUnderTest] | None = None,
) -> CampaignResult:
    """Run one campaign end to end and return its result (artifacts saved on violation)."""
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    root = out / "cluster"
    shutil.rmtree(root, ignore_errors=True)
    factory = cluster_factory or (
        lambda path, size: ProcessClusterUnderTest(
            path,
            size,
            target=config.target,
            extra_args=member_args(config),
            network=config.network,
            membership=config.membership,
            seed=config.seed,
            power=config.power,
            failpoints=config.failpoints,
            member_env=config.member_env,
        )
    )
    cluster = factory(root, config.members)
    _LIVE.add(cluster)
    rng = random.Random(config.seed)
    result = CampaignResult(config)
    history = History()
    result.started = time.monotonic()
    try:
        await anyio.to_thread.run_sync(cluster.start)
        stop = anyio.Event()
        kv = RegisterWorkload(
            cluster.endpoints,
            history,
            random.Random(rng.getrandbits(64)),
            workers=config.kv_workers,
            keys=config.keys,
            op_timeout=config.op_timeout,
        )
        multi = MultiKeyWorkload(cluster.endpoints, history, op_timeout=config.op_timeout)
        watch = WatchWorkload(
            cluster.endpoints, watchers=config.watchers, request_progress=config.request_progress
        )
        leases = LeaseWorkload(
            cluster.endpoints, random.Random(rng.getrandbits(64)), workers=config.lease_workers
        )
        locks = LockWorkload(
            cluster.endpoints,
            random.Random(rng.getrandbits(64)),
            contenders=config.lockers,
            backend=LOCK_BACKENDS[config.lock_backend](),
        )
        monitor = LeaderMonitor(cluster)
        injector = FaultInjector(cluster, monitor, random.Random(rng.getrandbits(64)))
        specs = schedule(
            config.seed,
            config.rounds,
            config.round_seconds,
            network=cluster.network is not None,
            membership=cluster.membership_changes,
            power=cluster.power,
            failpoints=cluster.failpoints,
            only=config.fault_kinds,
        )
        ended_early: list[str] = []
        async with anyio.create_task_group() as tg:
            for workload in (kv, multi, watch, leases, locks, monitor):
                name = type(workload).__name__
                tg.start_soon(run_watched, workload.run(stop), name, stop, ended_early)
            await injector.run(specs, stop)
        result.faults = injector.records
        result.leaders = monitor.leaders_over_time()

        # Durability: restart every member, then read everything back.
        await anyio.to_thread.run_sync(cluster.stop)
        await anyio.to_thread.run_sync(cluster.start)
        keys = [kv.key(i) for i in range(config.keys)]
        revision, final, hashes = await _final_state(cluster, history, keys)
        current = [cluster.endpoints[i] for i in cluster.members]
        reference = await _most_complete_history(current, revision)
        lock_events = await lock_history(current, locks, reference, revision)
        resume_from = rng.randint(1, max(1, revision))
        replay = await read_history(list(reversed(current)), PREFIX, resume_from, revision)
        ops = history.ops
        result.ops = ops
        result.reference = reference
        result.watchers = watch.logs
        _lease_observations_from_watch(leases.logs, watch)
        result.violations = _check(
            ops,
            reference,
            replay,
            resume_from,
            final,
            hashes,
            [f"m{i}" for i in cluster.members],
            watch,
            leases,
            locks,
            lock_events,
            config.strict_leases,
            # etcd 3.5.1 has etcd-io/etcd#20221; our store must not.
            progress_may_lag=config.target == "etcd",
        )
        result.violations["membership"] = injector.membership_failures
        result.counts = History.counts(ops)
        result.stats = {
            "final_revision": revision,
            "committed_events": len(reference),
            "watch_batches": sum(len(w.batches) for w in watch.logs),
            "leases": len(leases.logs),
            "lock_acquisitions": len(locks.acquisitions),
            "guarded_writes": len(locks.guarded_acks),
            "holder_stalls": locks.stalls,
            "stalled_writes_refused": locks.stalled_writes_refused,
            "membership_changes": injector.membership_changes,
            "members_at_end": [f"m{i}" for i in cluster.members],
            "lagging_progress_notifies": sum(lagging_progress_notifies(w) for w in watch.logs),
            "unconfirmed_lease_reads": sum(unconfirmed_lease_reads(x) for x in leases.logs),
            # Worker tasks that died before the end: their checks lost coverage.
            "workers_ended_early": sorted(
                ended_early
                + kv.ended_early
                + watch.ended_early
                + leases.ended_early
                + locks.ended_early
            ),
        }
        result.lease_logs = leases.logs
    except Exception as error:  # report harness failures with the artifacts, not a bare trace
        log.exception("campaign failed")
        result.violations.setdefault("harness", []).append(f"{type(error).__name__}: {error}")
        result.ops = history.ops
        result.counts = History.counts(result.ops)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(cluster.stop)
        _LIVE.discard(cluster)
        result.duration = time.monotonic() - result.started
    _save(result, cluster, history)
    return result


async def lock_history(
    endpoints: list[str], locks: LockWorkload, reference: list[Event], revision: int
) -> list[Event]:
    """The committed events of the lock's tenure key and its data key, in revision order."""
    key = locks.backend.tenure_key
    if key.startswith(PREFIX):
        return reference
    tenures = await read_history(endpoints, key, 1, revision)
    return sorted([*tenures, *reference], key=lambda e: e.revision)


def _check(
    ops: list[Op],
    reference: list[Event],
    replay: list[Event],
    resume_from: int,
    final: dict[str, str | None],
    hashes: dict[str, tuple[int, int]],
    members: list[str],
    watch: WatchWorkload,
    leases: LeaseWorkload,
    locks: LockWorkload,
    lock_events: list[Event],
    strict_leases: bool,
    progress_may_lag: bool,
) -> dict[str, list[str]]:
    v: dict[str, list[str]] = {}
    lin = linearizability.check(ops)
    v["linearizability"] = [f"{k}: {r}" for k, r in lin.failures.items()] + [
        f"{k}: undecided (search budget)" for k in lin.unknown
    ]
    v["revision-order"] = linearizability.check_revision_order(ops)
    v["durability"] = check_reference(reference, ops) + check_durability(
        reference, final, hashes, members
    )
    v["watch"] = [
        x for w in watch.logs for x in check_watch(w, reference, progress_may_lag=progress_may_lag)
    ] + check_resume(resume_from, PREFIX, replay, reference)
    v["lease"] = [
        x
        for lease in leases.logs
        for x in check_lease(
            lease, expiry_bound=LEASE_EXPIRY_BOUND, trust_lease_reads=strict_leases
        )
    ]
    v["lock"] = check_locks(
        locks.backend.tenure_key,
        LOCK_DATA,
        lock_events,
        locks.acquisitions,
        locks.guarded_acks,
        tokens_are_create_revisions=locks.backend.tokens_are_create_revisions,
    )
    return v


def _save(result: CampaignResult, cluster: ClusterUnderTest, history: History) -> None:
    out = result.config.out_dir
    (out / "summary.txt").write_text(result.summary() + "\n")
    data = {
        "ok": result.ok,
        "config": {k: str(v) for k, v in asdict(result.config).items()},
        "violations": result.violations,
        "counts": result.counts,
        "stats": result.stats,
        "faults": [asdict(f) for f in result.faults],
        "leaders": result.leaders,
        "started": result.started,
        "duration": result.duration,
        "repro": result.config.repro(),
    }
    (out / "summary.json").write_text(json.dumps(data, indent=1))
    try:
        from chaos.timeline import render_timeline

        render_timeline(result, out / "timeline.png")
    except Exception as error:  # the picture is a convenience; never fail a run on it
        log.warning("timeline not rendered: %s", error)
    try:
        from chaos.report import render_report

        render_report(result, out / "report.html")
    except Exception as error:  # likewise: the report must not hide the verdict
        log.warning("report not rendered: %s", error)
    if not result.ok or result.config.keep_artifacts:
        history.dump(out / "history.jsonl")
        with (out / "leases.jsonl").open("w") as f:
            for lease in result.lease_logs:
                f.write(json.dumps(asdict(lease)) + "\n")
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        for src in cluster.all_log_paths():
            if src.exists():
                shutil.copy(src, logs / src.name)
        (out / "REPRODUCE").write_text(result.config.repro() + "\n")
    else:
        shutil.rmtree(out / "cluster", ignore_errors=True)
