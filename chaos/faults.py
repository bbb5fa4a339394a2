"""Fault schedules (random from a seed, replayable) and their injection.

A schedule is a list of :class:`FaultSpec`, one per round, generated only
from the seed, so ``--seed N --rounds R`` replays the same sequence of fault
kinds, targets and timings. Targets are roles (``leader``, ``follower``,
``majority``, ``any``) resolved against the cluster when the fault fires.

Faults that need only process control work everywhere: SIGKILL (leader, a
follower, a majority), SIGSTOP/SIGCONT pauses, graceful restarts, and leader
transfers (MoveLeader). With a cluster whose peer links run through a
:class:`~chaos.proxy.ProxyMesh` (``network`` is set), schedules also
hold partitions (a minority cut off both ways), one-way drops, delay and loss.
With a spare slot (``membership``), schedules also hold membership changes:
``replace_member`` adds a fresh voter and then removes the leader or a
follower; ``learner_cycle`` adds a learner, promotes it once it has caught up,
and then removes the leader or another follower. Each returns the cluster to
its configured size within its round, so the other faults always meet
``size`` members and the cluster never has fewer.

With power-loss disks (``power``), schedules also hold ``power_loss`` (the
leader, a follower, a majority or every member loses power: what their disks
had not made durable is gone; they boot again after the hold), ``disk_full``
(one member's disk refuses writes with ENOSPC for the hold; a member that
stopped is started again once space is back) and ``slow_disk`` (every fsync of
one member takes 0.2-1.5 s for the hold). With failpoints (``failpoints``,
our store), ``failpoint`` arms a random crash point of the write path on the
leader or a follower with ``panic``, waits for the crash and restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import anyio

from chaos.cluster import ClusterUnderTest
from chaos.disk import DiskError
from chaos.proxy import LinkRule
from kvstore.client import Client, EtcdError
from kvstore.failpoints import POINTS
from kvstore.local.processes import MembershipError, StartError

log = logging.getLogger(__name__)

FAULT_KINDS = (
    "kill",
    "pause",
    "restart",
    "kill_majority",
    "move_leader",
    "none",
)
NETWORK_FAULT_KINDS = ("partition", "oneway", "delay", "loss")
MEMBERSHIP_FAULT_KINDS = ("replace_member", "learner_cycle")
POWER_FAULT_KINDS = ("power_loss", "disk_full", "slow_disk")
FAILPOINT_FAULT_KINDS = ("failpoint",)
# Relative weights of each kind in a random schedule.
WEIGHTS = {"kill": 4, "pause": 4, "restart": 2, "kill_majority": 1, "move_leader": 2, "none": 1}
NETWORK_WEIGHTS = {"partition": 4, "oneway": 3, "delay": 2, "loss": 2}
MEMBERSHIP_WEIGHTS = {"replace_member": 1, "learner_cycle": 1}
POWER_WEIGHTS = {"power_loss": 4, "disk_full": 1, "slow_disk": 1}
FAILPOINT_WEIGHTS = {"failpoint": 4}
# Crash points for the failpoint fault: every declared point but the skip-only mutant.
CRASH_POINTS = tuple(name for name in POINTS if name != "walFsync")
DEFRAG_POINTS = ("defragBeforeCopy", "defragBeforeRename", "defragAfterRename")
LEADER_POINTS = ("raftBeforeLeaderSend",)  # reached only by the leader
# How long a failpoint round waits for its point to be reached (snapshot points need
# a snapshot, which comes every --snapshot-count entries).
FAILPOINT_WAIT = 8.0


@dataclass(frozen=True)
class FaultSpec:
    """One round: wait ``delay`` s, inject ``kind`` on ``target``, hold ``hold`` s, heal."""

    round: int
    kind: str
    target: str
    delay: float
    hold: float


def schedule(
    seed: int,
    rounds: int,
    round_seconds: float = 1.5,
    *,
    network: bool = False,
    membership: bool = False,
    power: bool = False,
    failpoints: bool = False,
    only: tuple[str, ...] | None = None,
) -> list[FaultSpec]:
    """The replayable fault schedule for ``seed`` (with network faults if ``network``,
    membership changes if ``membership``, disk faults if ``power``, failpoint crashes
    if ``failpoints``); ``only`` keeps only those kinds of the mix."""
    rng = random.Random(seed)
    table = {
        **WEIGHTS,
        **(NETWORK_WEIGHTS if network else {}),
        **(MEMBERSHIP_WEIGHTS if membership else {}),
        **(POWER_WEIGHTS if power else {}),
        **(FAILPOINT_WEIGHTS if failpoints else {}),
    }
    if only is not None:
        unknown = set(only) - set(table)
        if unknown:
            raise ValueError(f"fault kinds not available in this campaign: {sorted(unknown)}")
        table = {k: w for k, w in table.items() if k in only}
    kinds = list(table)
    weights = [table[k] for k in kinds]
    out = []
    for r in range(rounds):
        kind = rng.choices(kinds, weights)[0]
        target = rng.choice(["leader", "follower"])
        if kind == "kill_majority":
            target = "majority"
        if kind == "power_loss":
            target = rng.choice(["leader", "follower", "majority", "all"])
        delay = rng.uniform(0.2, 0.5) * round_seconds
        hold = rng.uniform(0.5, 1.0) * round_seconds
        if kind in ("partition", "oneway"):
            hold = max(hold, rng.uniform(2.0, 3.5))  # long enough to outlast an election timeout
        out.append(FaultSpec(r, kind, target, delay, hold))
    return out


@dataclass
class FaultRecord:
    """What was actually done: times are monotonic."""

    round: int
    kind: str
    members: list[int]
    start: float
    end: float = 0.0
    note: str = ""


@dataclass
class LeaderSample:
    time: float
    member: int
    leader_index: int | None
    term: int


@dataclass
class LeaderMonitor:
    """Polls Status of every member to learn who leads over time."""

    cluster: ClusterUnderTest
    interval: float = 0.25
    samples: list[LeaderSample] = field(default_factory=list)
    member_ids: dict[int, int] = field(default_factory=dict)  # raft member id -> index

    async def leader(self, client: Client, timeout: float = 1.0) -> int | None:
        """The index of the member that currently claims a leader, by majority of answers."""
        votes: dict[int, int] = {}
        for i in self.cluster.members:
            endpoint = self.cluster.endpoints[i]
            try:
                st = await client.status(endpoint, timeout=timeout)
            except (EtcdError, OSError):
                continue
            self.member_ids[int(st.header.member_id)] = i
            idx = self.member_ids.get(int(st.leader))
            self.samples.append(LeaderSample(time.monotonic(), i, idx, int(st.raftTerm)))
            if idx is not None:
                votes[idx] = votes.get(idx, 0) + 1
        if not votes:
            return None
        return max(votes, key=lambda k: votes[k])

    async def run(self, stop: anyio.Event) -> None:
        async with Client(self.cluster.endpoints, default_timeout=1.0) as client:
            while not stop.is_set():
                await self.leader(client, timeout=0.5)
                await anyio.sleep(self.interval)

    def forget(self, slot: int) -> None:
        """Drop the member ids learned for ``slot`` (its member was removed)."""
        self.member_ids = {mid: i for mid, i in self.member_ids.items() if i != slot}

    def leaders_over_time(self) -> list[tuple[float, int | None]]:
        """(time, leader index) at each change, as seen by any member."""
        out: list[tuple[float, int | None]] = []
        for s in sorted(self.samples, key=lambda s: s.time):
            if s.leader_index is None:
                continue
            if not out or out[-1][1] != s.leader_index:
                out.append((s.time, s.leader_index))
        return out


@dataclass
class FaultInjector:
    """Applies a schedule to a cluster; always heals what it broke."""

    cluster: ClusterUnderTest
    monitor: LeaderMonitor
    rng: random.Random
    records: list[FaultRecord] = field(default_factory=list)
    heal_timeout: float = 60.0
    # Members added and removed (each MemberAdd, MemberPromote, MemberRemove done).
    membership_changes: int = 0
    # Membership changes a healed cluster did not complete in time.
    membership_failures: list[str] = field(default_factory=list)
    # The slot of a learner whose promotion failed: the next membership round removes it.
    unpromoted_learner: int | None = None

    async def _pick(
        self, client: Client, spec: FaultSpec, exclude: tuple[int, ...] = ()
    ) -> list[int]:
        members = [i for i in self.cluster.members if i not in exclude]
        n = len(members)
        leader = await self.monitor.leader(client)
        if spec.target == "all":
            return members
        if spec.target == "majority":
            start = self.rng.randrange(n)
            return [members[(start + k) % n] for k in range(n // 2 + 1)]
        if spec.target == "leader" and leader in members:
            return [leader]
        others = [i for i in members if i != leader]
        return [self.rng.choice(others)]

    async def run(self, specs: list[FaultSpec], stop: anyio.Event) -> None:
        """Run every round of ``specs`` (then set ``stop``)."""
        try:
            async with Client(self.cluster.endpoints, default_timeout=2.0) as client:
                for spec in specs:
                    await anyio.sleep(spec.delay)
                    await self.apply(client, spec)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.heal_all)
            stop.set()

    async def apply(self, client: Client, spec: FaultSpec) -> None:
        if spec.kind in MEMBERSHIP_FAULT_KINDS:
            await self._change_membership(client, spec)
            return
        members = await self._pick(client, spec)
        rec = FaultRecord(spec.round, spec.kind, members, time.monotonic())
        self.records.append(rec)
        log.info("round %d: %s %s", spec.round, spec.kind, members)
        c = self.cluster
        try:
            if spec.kind in ("kill", "kill_majority"):
                for i in members:
                    await anyio.to_thread.run_sync(c.kill, i)
                await anyio.sleep(spec.hold)
                for i in members:
                    await anyio.to_thread.run_sync(c.start_member, i)
                await anyio.to_thread.run_sync(c.wait_healthy, self.heal_timeout)
            elif spec.kind == "pause":
                for i in members:
                    await anyio.to_thread.run_sync(c.pause, i)
                await anyio.sleep(spec.hold)
                for i in members:
                    await anyio.to_thread.run_sync(c.resume, i)
            elif spec.kind == "restart":
                for i in members:
                    await anyio.to_thread.run_sync(c.stop_member, i)
                    await anyio.to_thread.run_sync(c.start_member, i)
                await anyio.to_thread.run_sync(c.wait_healthy, self.heal_timeout)
            elif spec.kind in NETWORK_FAULT_KINDS:
                rec.note = await self._network(client, spec, members)
                await anyio.sleep(spec.hold)
                if c.network is not None:
                    c.network.heal()
            elif spec.kind == "move_leader":
                rec.note = await self._move_leader(client)
                await anyio.sleep(spec.hold)
            elif spec.kind == "power_loss":
                rec.note = await self._power_loss(members, spec.hold)
            elif spec.kind in ("disk_full", "slow_disk"):
                rec.note = await self._disk_fault(spec, members[0])
            elif spec.kind == "failpoint":
                rec.note = await self._failpoint(client, members[0], spec.hold)
            else:
                await anyio.sleep(spec.hold)
        finally:
            rec.end = time.monotonic()

    async def _network(self, client: Client, spec: FaultSpec, members: list[int]) -> str:
        net = self.cluster.network
        if net is None:
            return "no network control"
        current = self.cluster.members
        if set(current) - set(self.monitor.member_ids.values()):
            await self.monitor.leader(client)
        net.set_member_ids(self.monitor.member_ids)
        n = len(current)
        x = members[0]
        others = [i for i in current if i != x]
        if spec.kind == "partition":
            minority = [x, self.rng.choice(others)] if n >= 5 and self.rng.random() < 0.5 else [x]
            majority = [i for i in current if i not in minority]
            net.partition([minority, majority])
            return f"partition {minority} | {majority}"
        if spec.kind == "oneway":
            y = self.rng.choice(others)
            src, dst = (x, y) if self.rng.random() < 0.5 else (y, x)
            net.set_rule(src, dst, LinkRule(blocked=True))
            return f"drop {src}->{dst}"
        if spec.kind == "delay":
            delay = self.rng.uniform(0.05, 0.3)
            for y in others:
                net.set_rule(x, y, LinkRule(delay=delay))
                net.set_rule(y, x, LinkRule(delay=delay))
            return f"delay {delay * 1000:.0f}ms on {x}'s links"
        loss = self.rng.uniform(0.05, 0.3)
        for y in others:
            net.set_rule(x, y, LinkRule(loss=loss))
        return f"loss {loss:.2f} from {x}"

    async def _power_loss(self, members: list[int], hold: float) -> str:
        """Cut the power of ``members`` at once, keep it off for ``hold``, boot them."""
        c = self.cluster
        lost = []
        for i in members:
            stats = await anyio.to_thread.run_sync(c.power_off, i)
            lost.append(f"m{i} -{stats.get('dirty_bytes', 0)}B/{stats.get('pending_ops', 0)}ops")
        await anyio.sleep(hold)
        for i in members:
            await anyio.to_thread.run_sync(c.power_on, i)
        await anyio.to_thread.run_sync(c.wait_healthy, self.heal_timeout)
        return "lost unsynced: " + ", ".join(lost)

    async def _disk_fault(self, spec: FaultSpec, i: int) -> str:
        """One member's disk is full or slow for the hold; a stopped member is restarted."""
        c = self.cluster
        disk = c.disk(i)
        if spec.kind == "disk_full":
            await anyio.to_thread.run_sync(lambda: disk.set_fault(full=True))
            note = "ENOSPC"
        else:
            delay_ms = int(self.rng.uniform(200, 1500))
            await anyio.to_thread.run_sync(lambda: disk.set_fault(fsync_delay_ms=delay_ms))
            note = f"fsync {delay_ms}ms"
        await anyio.sleep(spec.hold)
        await anyio.to_thread.run_sync(disk.heal)
        if not c.is_running(i):
            note += "; member stopped, restarted once healed"
            await anyio.to_thread.run_sync(c.start_member, i)
        await anyio.to_thread.run_sync(c.wait_healthy, self.heal_timeout)
        return note

    async def _failpoint(self, client: Client, i: int, hold: float) -> str:
        """Crash member ``i`` at a random failpoint and restart it (if it got there)."""
        c = self.cluster
        leader = await self.monitor.leader(client)
        points = [p for p in CRASH_POINTS if leader == i or p not in LEADER_POINTS]
        name = self.rng.choice(points)
        await anyio.to_thread.run_sync(c.arm_failpoint, i, name, "panic")
        if name in DEFRAG_POINTS:
            with contextlib.suppress(EtcdError, OSError):
                await client.defragment(c.endpoints[i], timeout=5.0)
        crashed = await anyio.to_thread.run_sync(c.wait_exit, i, max(hold, FAILPOINT_WAIT))
        if not crashed:
            await anyio.to_thread.run_sync(c.arm_failpoint, i, name, "off")
            return f"{name} not reached"
        await anyio.to_thread.run_sync(c.start_member, i)
        await anyio.to_thread.run_sync(c.wait_healthy, self.heal_timeout)
        return f"crashed at {name}"

    async def _move_leader(self, client: Client) -> str:
        leader = await self.monitor.leader(client)
        if leader is None:
            return "no leader"
        ids = {i: mid for mid, i in self.monitor.member_ids.items()}
        targets = [i for i in self.cluster.members if i != leader and i in ids]
        if not targets:
            return "no target"
        target = self.rng.choice(targets)
        try:
            await client.move_leader(
                ids[target], endpoint=self.cluster.endpoints[leader], timeout=5.0
            )
        except (EtcdError, OSError) as error:
            return f"move to {target} failed: {type(error).__name__}"
        return f"moved {leader} -> {target}"

    async def _change_membership(self, client: Client, spec: FaultSpec) -> None:
        """Add a member (a voter, or a learner then promoted), hold, remove another one.

        The member removed is picked when it is removed (the leader may have
        changed since the round began), among the members other than the new one.
        """
        c = self.cluster
        rec = FaultRecord(spec.round, spec.kind, [], time.monotonic())
        self.records.append(rec)
        learner = spec.kind == "learner_cycle"
        steps: list[str] = []
        try:
            added = None
            if len(c.members) == c.size:
                added = await anyio.to_thread.run_sync(c.add_member, learner)
                self.membership_changes += 1
                rec.members.append(added)
                steps.append(f"added {'learner ' if learner else ''}m{added}")
                log.info("round %d: %s", spec.round, steps[-1])
                if learner:
                    self.unpromoted_learner = added
                    await anyio.to_thread.run_sync(c.promote_member, added)
                    self.unpromoted_learner = None
                    self.membership_changes += 1
                    steps.append(f"promoted m{added}")
                await anyio.sleep(spec.hold)
            if self.unpromoted_learner is not None:
                # An earlier round left a learner behind: removing it restores the
                # configured number of voters, where removing a voter would go below it.
                victim, role = self.unpromoted_learner, "learner"
                self.unpromoted_learner = None
            else:
                [victim] = await self._pick(client, spec, exclude=() if added is None else (added,))
                role = "leader" if victim == await self.monitor.leader(client) else "follower"
            await anyio.to_thread.run_sync(c.remove_member, victim)
            self.membership_changes += 1
            self.monitor.forget(victim)
            rec.members.append(victim)
            steps.append(f"removed {role} m{victim}")
            log.info("round %d: %s", spec.round, steps[-1])
            await anyio.to_thread.run_sync(c.wait_healthy, self.heal_timeout)
        except (MembershipError, StartError) as error:
            # etcdctl's own error is its last line (warnings come before it).
            lines = str(error).splitlines() or [type(error).__name__]
            steps.append(f"failed: {lines[0]} {lines[-1] if len(lines) > 1 else ''}".strip())
            self.membership_failures.append(f"round {spec.round} {spec.kind}: {'; '.join(steps)}")
        finally:
            rec.note = "; ".join(steps)
            rec.end = time.monotonic()

    def heal_all(self) -> None:
        """Heal the network and the disks, resume paused members, boot and start stopped
        ones, disarm failpoints; wait until healthy."""
        c = self.cluster
        if c.network is not None:
            c.network.heal()
        for i in c.members:
            c.resume(i)
            if c.power:
                with contextlib.suppress(DiskError):
                    c.disk(i).heal()
            if not c.is_running(i):
                if c.power:
                    c.power_on(i)
                else:
                    c.start_member(i)
            elif c.failpoints:
                for name in CRASH_POINTS:
                    with contextlib.suppress(RuntimeError, OSError):
                        c.arm_failpoint(i, name, "off")
        c.wait_healthy(self.heal_timeout)
