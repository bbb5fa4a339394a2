"""A chaos campaign: start a cluster, run workloads under a fault schedule, check, report."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from kvstore.chaos import linearizability
from kvstore.chaos.checkers import (
    Event,
    LeaseLog,
    WatcherLog,
    check_durability,
    check_lease,
    check_locks,
    check_reference,
    check_resume,
    check_watch,
    lagging_progress_notifies,
    unconfirmed_lease_reads,
)
from kvstore.chaos.cluster import ClusterUnderTest, ProcessClusterUnderTest
from kvstore.chaos.faults import FaultInjector, FaultRecord, LeaderMonitor, schedule
from kvstore.chaos.history import OK, History, Op
from kvstore.chaos.workloads import (
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


@dataclass
class CampaignConfig:
    """Parameters of one campaign; ``repro`` renders them as a CLI command."""

    seed: int = 1
    rounds: int = 10
    members: int = 3
    round_seconds: float = 1.5
    out_dir: Path = Path("chaos-out")
    kv_workers: int = 4
    keys: int = 4
    watchers: int = 2
    lease_workers: int = 2
    lockers: int = 3
    op_timeout: float = 2.0
    keep_artifacts: bool = False
    # Ask for progress notifications (RequestProgress) instead of relying on the
    # periodic ones. etcd < 3.5.8 answers them before pending events are sent
    # (etcd-io/etcd#15220), which the watch checker reports, so it is opt-in.
    request_progress: bool = False
    # Put a fault-injecting proxy on the peer links: partitions, one-way drops, delay, loss.
    network: bool = False
    # Whether lease reads (TimeToLive, keepalive "not found") are linearizable. etcd 3.5.1
    # is not (etcd-io/etcd#13915, fixed by #13690): only committed evidence is judged then.
    # Our server must be: run it with --strict-leases.
    strict_leases: bool = False
    # Membership changes in the fault mix (replace_member, learner_cycle): the cluster
    # gets a spare slot and grows to members + 1 for part of those rounds.
    membership: bool = True
    # Which store the cluster runs: "etcd" (the reference) or "kvstore" (ours).
    target: str = "etcd"
    # How the lock contenders lock: "election" (the election package's LeaderElector,
    # fenced Leadership writes) or "txn" (etcd's lease + create-if-absent recipe).
    lock_backend: str = "election"
    # Members' data directories on power-loss disks: power_loss, disk_full and slow_disk
    # in the fault mix.
    power: bool = False
    # Crashes at random failpoints of the write path (our store only).
    failpoints: bool = False
    # Only these fault kinds (None: the whole mix the other options allow).
    fault_kinds: tuple[str, ...] | None = None
    # Extra environment of every member process (tests plant mutants with failpoints).
    member_env: dict[str, str] = field(default_factory=dict)

    def repro(self) -> str:
        extra = f" --target {self.target}"
        extra += " --request-progress" if self.request_progress else ""
        extra += " --network" if self.network else ""
        extra += " --strict-leases" if self.strict_leases else ""
        extra += "" if self.membership else " --no-membership"
        extra += f" --lock-backend {self.lock_backend}"
        extra += " --power" if self.power else ""
        extra += " --failpoints" if self.failpoints else ""
        extra += f" --faults {','.join(self.fault_kinds)}" if self.fault_kinds else ""
        env = " ".join(f"{k}={v!r}" for k, v in sorted(self.member_env.items()))
        return (
            f"{env + ' ' if env else ''}"
            f"python -m kvstore.chaos --seed {self.seed} --rounds {self.rounds} "
            f"--members {self.members} --round-seconds {self.round_seconds} "
            f"--kv-workers {self.kv_workers} --keys {self.keys} --watchers {self.watchers} "
            f"--lease-workers {self.lease_workers} --lockers {self.lockers}{extra} "
            f"--out {self.out_dir}"
        )


@dataclass
class CampaignResult:
    """Everything a campaign found."""

    config: CampaignConfig
    violations: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    leaders: list[tuple[float, int | None]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    duration: float = 0.0
    ops: list[Op] = field(default_factory=list)
    reference: list[Event] = field(default_factory=list)
    watchers: list[WatcherLog] = field(default_factory=list)
    lease_logs: list[LeaseLog] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def summary(self) -> str:
        """A readable multi-line summary of the run."""
        t0 = self.started
        lines = [
            f"chaos campaign seed={self.config.seed} rounds={self.config.rounds} "
            f"members={self.config.members} duration={self.duration:.1f}s",
            f"result: {'OK, no violations' if self.ok else 'VIOLATIONS FOUND'}",
            "operations by outcome:",
        ]
        for kind, per in sorted(self.counts.items()):
            lines.append(f"  {kind:8} " + " ".join(f"{s}={n}" for s, n in sorted(per.items())))
        lines.append("stats: " + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())))
        lines.append(f"faults ({len(self.faults)}):")
        for f in self.faults:
            lines.append(
                f"  r{f.round:<4} {f.start - t0:8.2f}s..{f.end - t0:8.2f}s {f.kind:13} "
                f"members={f.members} {f.note}"
            )
        lines.append(f"leaders over time ({len(self.leaders)} changes):")
        lines.append(
            "  "
            + ", ".join(f"{t - t0:.1f}s:m{i}" for t, i in self.leaders[:200])
            + (" ..." if len(self.leaders) > 200 else "")
        )
        for checker, found in sorted(self.violations.items()):
            status = "ok" if not found else f"{len(found)} violation(s)"
            lines.append(f"check {checker}: {status}")
            lines.extend(f"    {v}" for v in found[:20])
        if not self.ok:
            lines.append(f"reproduce: {self.config.repro()}")
        return "\n".join(lines)


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
        reference = await read_history(current, PREFIX, 1, revision)
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
        from kvstore.chaos.timeline import render_timeline

        render_timeline(result, out / "timeline.png")
    except Exception as error:  # the picture is a convenience; never fail a run on it
        log.warning("timeline not rendered: %s", error)
    try:
        from kvstore.chaos.report import render_report

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
