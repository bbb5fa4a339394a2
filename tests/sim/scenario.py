"""Helpers for hand-written scenarios on top of the simulator (no random faults)."""

from __future__ import annotations

from collections.abc import Callable

from kvstore.raft import Message, RaftNode, Role
from tests.sim.cluster import Sim, SimConfig, SimNode

Allow = Callable[[Message], bool]


def everything(m: Message) -> bool:
    return True


def make(nodes: int, **kw: object) -> Sim:
    sim = Sim(0, SimConfig(nodes=nodes, trace_len=None, **kw))  # type: ignore[arg-type]
    sim.faults = False  # no random crashes inside Ready handling
    return sim


def raft(sim: Sim, nid: int) -> RaftNode:
    r = sim.nodes[nid].raft
    assert r is not None, f"n{nid} is down"
    return r


def pump(sim: Sim, allow: Allow = everything, limit: int = 10_000) -> None:
    """Deliver queued messages in FIFO order until none is left; drop those not allowed."""
    for _ in range(limit):
        if not sim.net:
            return
        sim.now += 1
        if allow(sim.net[0]):
            sim.deliver(0)
        else:
            sim._drop(0, "scenario")
    raise AssertionError("network did not quiesce")


def campaign(sim: Sim, nid: int, allow: Allow = everything) -> None:
    n = sim.nodes[nid]
    raft(sim, nid).campaign()
    sim.process(n)
    pump(sim, allow)


def put(sim: Sim, nid: int, key: int, tag: str) -> bytes:
    data = f"k{key}={tag}".encode()
    sim.write_key[data] = key
    assert raft(sim, nid).propose(data), f"proposal at n{nid} dropped"
    sim.process(sim.nodes[nid])
    return data


def rounds(sim: Sim, k: int, until: Callable[[], bool] | None = None) -> int:
    """Up to ``k`` rounds of (tick everyone, deliver everything); stop early on ``until``."""
    for i in range(k):
        sim.settle_round()
        if until is not None and until():
            return i
    if until is not None:
        raise AssertionError(f"condition not reached in {k} rounds")
    return k


def isolate(sim: Sim, nid: int) -> None:
    for other in sim.nodes:
        if other != nid:
            sim.blocked.add((nid, other))
            sim.blocked.add((other, nid))


def committed_data(sim: Sim) -> set[bytes]:
    return {d for _, _, d in sim.applied_log}


def leader_id(sim: Sim) -> int:
    ld = sim.leader()
    return 0 if ld is None else ld.id


def node(sim: Sim, nid: int) -> SimNode:
    return sim.nodes[nid]


def is_leader(sim: Sim, nid: int) -> bool:
    r = sim.nodes[nid].raft
    return r is not None and r.role == Role.LEADER
