"""``python -m chaos``: run a chaos campaign against a real etcd or our store."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import anyio

from chaos.campaign import CampaignConfig
from chaos.runner import run_campaign, stop_live_clusters
from chaos.workloads import LOCK_BACKENDS


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one campaign, print its summary; exit 1 on violations."""
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--members", type=int, default=3, choices=[3, 5])
    p.add_argument("--round-seconds", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=Path("chaos-out"))
    p.add_argument("--kv-workers", type=int, default=4)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--watchers", type=int, default=2)
    p.add_argument("--lease-workers", type=int, default=2)
    p.add_argument("--lockers", type=int, default=3)
    p.add_argument(
        "--request-progress",
        action="store_true",
        help="watchers call RequestProgress (exposes etcd-io/etcd#15220 on etcd < 3.5.8)",
    )
    p.add_argument(
        "--network",
        action="store_true",
        help="route peer links through a fault proxy: partitions, one-way drops, delay, loss",
    )
    p.add_argument(
        "--strict-leases",
        action="store_true",
        help="judge lease reads (TimeToLive, keepalive) as linearizable (etcd 3.5.1 is not)",
    )
    p.add_argument(
        "--no-membership",
        action="store_true",
        help="leave membership changes (replace_member, learner_cycle) out of the fault mix",
    )
    p.add_argument(
        "--power",
        action="store_true",
        help="members' data on power-loss disks (FUSE): power_loss, disk_full, slow_disk",
    )
    p.add_argument(
        "--failpoints",
        action="store_true",
        help="crash members at random failpoints of the write path (our store only)",
    )
    p.add_argument(
        "--faults",
        default="",
        help="comma-separated fault kinds to keep from the mix (default: all available)",
    )
    p.add_argument(
        "--member-flag",
        action="append",
        default=[],
        help="an extra flag of every member process, e.g. --member-flag=--snapshot-count=50",
    )
    p.add_argument("--keep", action="store_true", help="save history and logs even when OK")
    p.add_argument(
        "--target", choices=["etcd", "kvstore"], default="etcd", help="which store to test"
    )
    p.add_argument(
        "--lock-backend",
        choices=sorted(LOCK_BACKENDS),
        default="election",
        help="lock contenders: the election package's LeaderElector, or etcd's lease + txn",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = CampaignConfig(
        seed=args.seed,
        rounds=args.rounds,
        members=args.members,
        round_seconds=args.round_seconds,
        out_dir=args.out,
        kv_workers=args.kv_workers,
        keys=args.keys,
        watchers=args.watchers,
        lease_workers=args.lease_workers,
        lockers=args.lockers,
        keep_artifacts=args.keep,
        request_progress=args.request_progress,
        network=args.network,
        strict_leases=args.strict_leases,
        membership=not args.no_membership,
        target=args.target,
        lock_backend=args.lock_backend,
        power=args.power,
        failpoints=args.failpoints,
        fault_kinds=tuple(k for k in args.faults.split(",") if k) or None,
        member_env={k: v for k, v in os.environ.items() if k == "KVSTORE_FAILPOINTS"},
        member_flags=tuple(args.member_flag),
    )

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        result = anyio.run(run_campaign, config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_live_clusters()
    print(result.summary())
    print(f"artifacts: {config.out_dir}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
