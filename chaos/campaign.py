"""What a chaos campaign is asked to do (its configuration) and what it found (its result)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.checkers import Event, LeaseLog, WatcherLog
from chaos.faults import FaultRecord
from chaos.history import Op


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
    # Extra flags of every member process (tests widen windows, e.g. the backend batch).
    member_flags: tuple[str, ...] = ()

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
        extra += "".join(f" --member-flag={shlex.quote(f)}" for f in self.member_flags)
        env = " ".join(f"{k}={v!r}" for k, v in sorted(self.member_env.items()))
        return (
            f"{env + ' ' if env else ''}"
            f"python -m chaos --seed {self.seed} --rounds {self.rounds} "
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
