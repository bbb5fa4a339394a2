"""Micro-benchmark of the Raft core: ``python -m kvstore.raft.bench``.

A 3-node in-process cluster on a zero-latency network (messages are delivered on
the next loop iteration; persistence is free). Reports committed entries per
second of CPU time (``time.process_time``), for single-entry proposals and for
batches of 64, both pipelined: every loop iteration proposes, then lets each
node handle one Ready and delivers the messages sent so far.
"""

from __future__ import annotations

import argparse
import random
import time

from kvstore.raft.raft import Config, RaftNode, initial_snapshot
from kvstore.raft.types import HardState, Message, Role


class Cluster:
    def __init__(self, size: int = 3) -> None:
        ids = list(range(1, size + 1))
        snap = initial_snapshot(ids)
        self.nodes = {
            i: RaftNode(
                Config(id=i, max_inflight_msgs=1024, max_size_per_msg=1 << 20),
                random.Random(i),
                hard_state=HardState(term=1, commit=1),
                snapshot=snap,
            )
            for i in ids
        }
        self.queue: list[Message] = []
        self.applied = 0  # normal entries applied on the leader

    def cycle(self) -> None:
        """Each node handles one Ready; then deliver everything that was sent."""
        q = self.queue
        for node in self.nodes.values():
            if node.has_ready():
                rd = node.ready()
                q.extend(rd.messages)
                # (persist: free on this simulated disk)
                q.extend(rd.persisted_messages)
                if node.role == Role.LEADER:
                    for e in rd.committed_entries:
                        if e.data:
                            self.applied += 1
                node.advance(rd)
        self.queue = []
        nodes = self.nodes
        for m in q:
            nodes[m.to].step(m)

    def elect(self, nid: int = 1) -> RaftNode:
        self.nodes[nid].campaign()
        for _ in range(20):
            self.cycle()
        leader = self.nodes[nid]
        assert leader.role == Role.LEADER
        return leader


def bench(batch: int, entries: int, payload: bytes = b"x" * 64) -> float:
    """Committed entries per CPU second."""
    c = Cluster()
    leader = c.elect()
    datas = [payload] * batch
    proposals = entries // batch
    t0 = time.process_time()
    for _ in range(proposals):
        ok = leader.propose(payload) if batch == 1 else leader.propose_batch(datas)
        assert ok
        c.cycle()
    while c.applied < proposals * batch:
        c.cycle()
    dt = time.process_time() - t0
    return c.applied / dt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Raft core micro-benchmark")
    p.add_argument("--entries", type=int, default=100_000)
    a = p.parse_args(argv)
    single = bench(1, a.entries // 2)
    batched = bench(64, a.entries * 2)
    print(f"single-entry proposals: {single:,.0f} committed entries/s of CPU")
    print(f"batches of 64:          {batched:,.0f} committed entries/s of CPU")


if __name__ == "__main__":
    main()
