"""Runtime membership changes with the real etcdctl, against our cluster and a real etcd.

Members are added (as voters and as learners), promoted and removed while the
cluster serves; the membership survives restarts of every member; the error
cases answer the same text from etcdctl as a real etcd does.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.client import Client
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from tests.compat.pairs import Server, side_by_side

DEADLINE = 60.0


def ctl(cluster: Server, *args: str, endpoints: list[str] | None = None) -> str:
    """etcdctl's output, or its error line when it fails."""
    proc = cluster.etcdctl(*args, endpoints=endpoints)
    if proc.returncode == 0:
        return proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    return "\n".join(errors) or proc.stderr


def member_rows(cluster: Server) -> list[list[str]]:
    """``member list`` as rows: id, status, name, peer URLs, client URLs, is learner."""
    out = ctl(cluster, "member", "list")
    return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line]


def leader_index(cluster: Server) -> int:
    """Index of the member that leads, as the members themselves report it."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for i, m in enumerate(cluster.members):
            if m.removed or not m.running:
                continue
            out = ctl(cluster, "endpoint", "status", "-w", "json", endpoints=[m.endpoint])
            try:
                status = json.loads(out)[0]["Status"]
            except (ValueError, KeyError, IndexError):
                continue
            if status["leader"] and status["leader"] == status["header"]["member_id"]:
                return i
        time.sleep(0.2)  # waiting for an election in other processes
    raise AssertionError("no leader")


def wait_same_hash(cluster: Server) -> None:
    """Wait until every running member reports the same KV hash at the same revision."""
    deadline = time.monotonic() + DEADLINE
    seen: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        seen = {}
        for m in cluster.members:
            if m.removed or not m.running:
                continue
            out = ctl(cluster, "endpoint", "hashkv", "-w", "json", endpoints=[m.endpoint])
            try:
                hkv = json.loads(out)[0]["HashKV"]
            except (ValueError, KeyError, IndexError):
                break
            seen[m.name] = (hkv["header"]["revision"], hkv["hash"])
        else:
            if len(set(seen.values())) == 1:
                return
        time.sleep(0.2)  # members apply on their own; nothing to await from here
    tails = "\n".join(f"--- {m.name}\n{m.log_tail(15)}" for m in cluster.members)
    raise AssertionError(f"members disagree: {seen}\n{tails}")


def put_eventually(cluster: Server, key: str, value: str) -> None:
    """A write succeeds once the members have a leader (errors only while they elect:
    etcd's own answer, or etcdctl's deadline when the answer took too long)."""
    deadline = time.monotonic() + DEADLINE
    while (out := ctl(cluster, "put", key, value)) != "OK\n":
        assert any(s in out for s in ("leader", "timed out", "deadline exceeded")), out
        assert time.monotonic() < deadline, out
        time.sleep(0.1)  # an election in other processes


def linearizable_member_names(endpoint: str) -> list[str]:
    async def run() -> list[str]:
        async with Client([endpoint]) as client:
            resp = await client.member_list(linearizable=True)
            return sorted(m.name for m in resp.members)

    return asyncio.run(run())


def put_many(cluster: Server, count: int) -> None:
    async def run() -> None:
        async with Client(cluster.endpoints) as client:
            for i in range(count):
                await client.put(f"/m/{i:03}", f"v{i}")

    asyncio.run(run())


def test_add_learner_promote_remove_leader_and_restart(tmp_path: Path) -> None:
    # A low snapshot count: the log is compacted, so the new member needs a snapshot.
    cluster = KVCluster(root=tmp_path, size=3, extra_args=["--snapshot-count=100"])
    try:
        cluster.start()
        put_many(cluster, 250)

        # A learner joins an existing cluster, catches up, then is promoted.
        new = cluster.add_member(learner=True)
        rows = {r[2]: r for r in member_rows(cluster)}
        assert rows[cluster.members[new].name][1] == "started"
        assert rows[cluster.members[new].name][5] == "true"
        cluster.promote_member(new)
        rows = {r[2]: r for r in member_rows(cluster)}
        assert sorted(rows) == ["kv0", "kv1", "kv2", "kv3"]
        joined = cluster.members[new].endpoint
        assert linearizable_member_names(joined) == ["kv0", "kv1", "kv2", "kv3"]
        assert all(r[5] == "false" for r in rows.values())
        put_eventually(cluster, "/m/after-add", "x")
        wait_same_hash(cluster)
        assert "restored snapshot" in cluster.members[new].log_path.read_text()
        got = ctl(
            cluster,
            "get",
            "/m/",
            "--prefix",
            "--keys-only",
            endpoints=[cluster.members[new].endpoint],
        )
        assert got.split() == [f"/m/{i:03}" for i in range(250)] + ["/m/after-add"]

        # Removing the leader: it stops by itself, the others elect a leader and serve.
        leader = leader_index(cluster)
        cluster.remove_member(leader)
        log_text = cluster.members[leader].log_path.read_text()
        assert "the member has been permanently removed from the cluster" in log_text
        assert not cluster.members[leader].running
        put_eventually(cluster, "/m/after-remove", "y")
        names = sorted(r[2] for r in member_rows(cluster))
        assert names == sorted(m.name for m in cluster.members if not m.removed)
        assert len(names) == 3

        # A voter joins directly; a follower removed while it is down stops itself as
        # soon as it is restarted and hears from the others.
        voter = cluster.add_member()
        put_eventually(cluster, "/m/after-voter", "w")
        wait_same_hash(cluster)
        down = next(
            i
            for i, m in enumerate(cluster.members)
            if not m.removed and i not in (voter, leader_index(cluster))
        )
        cluster.kill(down)
        cluster.remove_member(down)
        cluster.spawn(down)
        process = cluster.members[down].process
        assert process is not None
        process.wait(timeout=DEADLINE)
        removed_log = cluster.members[down].log_path.read_text()
        assert "the member has been permanently removed from the cluster" in removed_log

        # SIGKILL everyone and restart: the membership is the one after the changes.
        before = sorted((r[0], r[2], r[3], r[5]) for r in member_rows(cluster))
        for i, m in enumerate(cluster.members):
            if not m.removed:
                cluster.kill(i)
        cluster.start()
        after = sorted((r[0], r[2], r[3], r[5]) for r in member_rows(cluster))
        assert after == before
        put_eventually(cluster, "/m/after-restart", "z")
        wait_same_hash(cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    with side_by_side(tmp_path_factory, "member") as pair:
        yield pair


def _mask(text: str) -> str:
    """IDs differ between the clusters (etcdctl pads them to 16 characters with spaces)."""
    return re.sub(r" +[0-9a-f]{8,16}\b", " <ID>", text)


def _when_ready(cluster: Server, *args: str) -> str:
    """Run a membership command once the cluster stops calling itself unhealthy.

    Both refuse changes until the leader has been connected to every voter for
    five seconds (etcd's strict reconfiguration check).
    """
    deadline = time.monotonic() + DEADLINE
    while True:
        out = ctl(cluster, *args)
        if "unhealthy cluster" not in out or time.monotonic() > deadline:
            return out
        time.sleep(0.5)  # the check passes with time alone


def _until_refused(cluster: Server, args: list[str], endpoints: list[str]) -> str:
    """Run a change until the leader notices the member that went down and refuses it."""
    deadline = time.monotonic() + DEADLINE
    while True:
        out = ctl(cluster, *args, endpoints=endpoints)
        if "unhealthy cluster" in out or time.monotonic() > deadline:
            return out
        assert out.startswith("Error:"), f"{args} was accepted with a voter down: {out}"
        time.sleep(0.2)  # the leader's connection to the killed member has yet to break


def test_member_add_right_after_move_leader(both: dict[str, Server]) -> None:
    """A member that has just become leader was connected to the other voters all along.

    (Runs before the error test below, which takes a member down.)
    """
    for name, cluster in both.items():
        warm = _when_ready(
            cluster, "member", "add", "warm", "--peer-urls=http://127.0.0.1:4", "--learner"
        )
        added = re.search(r"Member +([0-9a-f]+) added", warm)
        assert added is not None, f"{name}: {warm}"
        assert ctl(cluster, "member", "remove", added.group(1)).startswith("Member")
        for attempt in range(2):  # twice: each time a follower that may never have led leads
            leader = leader_index(cluster)
            target = next(i for i in range(3) if i != leader)
            moved = ctl(cluster, "move-leader", f"{cluster.member_id(target):x}")
            assert "Leadership transferred" in moved, f"{name}: {moved}"
            out = ctl(
                cluster,
                "member",
                "add",
                "late",
                f"--peer-urls=http://127.0.0.1:{5 + attempt}",
                "--learner",
            )
            learner = re.search(r"Member +([0-9a-f]+) added", out)
            assert learner is not None, f"{name}: refused right after move-leader: {out}"
            assert ctl(cluster, "member", "remove", learner.group(1)).startswith("Member")


def test_membership_errors_match_etcd(both: dict[str, Server]) -> None:
    outs: dict[str, list[str]] = {}
    for name, cluster in both.items():
        first = f"{cluster.member_id(0):x}"
        taken = cluster.members[1].peer_url
        out = [
            _when_ready(cluster, "member", "add", "dup", f"--peer-urls={taken}"),
            ctl(cluster, "member", "remove", "1234"),
            ctl(cluster, "member", "promote", first),
            ctl(cluster, "member", "update", "1234", "--peer-urls=http://127.0.0.1:9"),
            ctl(cluster, "member", "update", first, f"--peer-urls={taken}"),
            ctl(cluster, "member", "update", first, f"--peer-urls={cluster.members[0].peer_url}"),
        ]
        # A learner that never starts cannot be promoted; a second learner is refused.
        added = ctl(cluster, "member", "add", "idle", "--peer-urls=http://127.0.0.1:1", "--learner")
        out.append(added.splitlines()[0])
        learner = re.search(r"Member +([0-9a-f]+) added", added)
        assert learner is not None, added
        out.append(ctl(cluster, "member", "promote", learner.group(1)))
        out.append(
            ctl(cluster, "member", "add", "two", "--peer-urls=http://127.0.0.1:2", "--learner")
        )
        rows = member_rows(cluster)
        out.append(",".join(sorted(r[1] + "/" + r[5] for r in rows)))
        out.append(ctl(cluster, "member", "remove", learner.group(1)))
        out.append(str(len(member_rows(cluster))))
        # With a voter down, a change that would leave no active quorum is refused
        # (the requests go to the leader, which decides on both servers).
        leader = leader_index(cluster)
        down, up = [i for i in range(3) if i != leader]
        down_id = f"{cluster.member_id(down):x}"
        cluster.kill(down)
        at_leader = [cluster.members[leader].endpoint]
        add = ["member", "add", "late", "--peer-urls=http://127.0.0.1:3"]
        out.append(_until_refused(cluster, add, at_leader))
        remove_up = ["member", "remove", f"{cluster.member_id(up):x}"]
        out.append(_until_refused(cluster, remove_up, at_leader))
        out.append(ctl(cluster, "member", "remove", down_id, endpoints=at_leader))
        outs[name] = [_mask(o) for o in out]
    assert outs["kvstore"] == outs["etcd"], outs
    out = outs["etcd"]
    assert out[:5] == [
        "Error: etcdserver: Peer URLs already exists",
        "Error: etcdserver: member not found",
        "Error: etcdserver: can only promote a learner member",
        "Error: etcdserver: member not found",
        "Error: etcdserver: Peer URLs already exists",
    ]
    assert out[5] == "Member <ID> updated in cluster <ID>\n"
    assert out[6] == "Member <ID> added to cluster <ID>"
    assert out[7:9] == [
        "Error: etcdserver: can only promote a learner member which is in sync with leader",
        "Error: etcdserver: too many learner members in cluster",
    ]
    assert out[9] == "started/false,started/false,started/false,unstarted/true"
    assert out[10].startswith("Member <ID> removed from cluster <ID>")
    assert out[11] == "3"
    assert out[12:14] == ["Error: etcdserver: unhealthy cluster"] * 2
    assert out[14].startswith("Member <ID> removed from cluster <ID>")


@pytest.mark.slow
@pytest.mark.parametrize("kind", [KVCluster, EtcdCluster])
def test_cluster_helpers_add_and_remove_members(
    kind: type[KVCluster] | type[EtcdCluster], tmp_path: Path
) -> None:
    """The membership helpers the chaos harness uses work the same on both servers."""
    cluster = kind(root=tmp_path, size=3)
    try:
        cluster.start()
        new = cluster.add_member()
        put_eventually(cluster, "/helpers/a", "1")
        wait_same_hash(cluster)
        assert len(member_rows(cluster)) == 4
        cluster.remove_member(0)
        assert not cluster.members[0].running
        put_eventually(cluster, "/helpers/b", "2")
        assert cluster.members[new].running
        assert sorted(r[2] for r in member_rows(cluster)) == sorted(
            m.name for m in cluster.members if not m.removed
        )
    finally:
        cluster.stop()
