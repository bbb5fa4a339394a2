"""The real etcdctl against our 3-member cluster and a real 3-member etcd, side by side.

Every scenario runs the same commands against both servers and compares the
outputs after masking what may legitimately differ (IDs, URLs, timings).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from kvstore.local.binaries import etcdctl_path
from kvstore.local.etcd import run_etcdctl
from tests.compat.pairs import Server, side_by_side


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    with side_by_side(tmp_path_factory, "ctl") as pair:
        yield pair


def ctl(server: Server, *args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = run_etcdctl(server.endpoints, *args, stdin=stdin, timeout=30)
    if check:
        assert proc.returncode == 0, f"etcdctl {args} failed: {proc.stderr}"
    if not check:
        # The client's JSON retry logs carry timestamps and addresses: keep the error line.
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        return proc.stdout + "\n".join(errors)
    return proc.stdout


def _mask(text: str) -> str:
    return re.sub(r'"(ClusterID|MemberID)" : \d+', r'"\1" : <ID>', text)


def both(servers: dict[str, Server], *args: str, stdin: str | None = None) -> str:
    """Run on both servers; assert equal outputs; return it."""
    outs = {name: _mask(ctl(s, *args, stdin=stdin)) for name, s in servers.items()}
    assert outs["kvstore"] == outs["etcd"], outs
    return outs["etcd"]


def test_put_get_del(servers: dict[str, Server]) -> None:
    assert both(servers, "put", "/ctl/a", "1") == "OK\n"
    both(servers, "put", "/ctl/b", "2")
    both(servers, "put", "/ctl/c", "3")
    assert both(servers, "get", "/ctl/", "--prefix") == "/ctl/a\n1\n/ctl/b\n2\n/ctl/c\n3\n"
    both(servers, "get", "/ctl/", "--prefix", "--keys-only")
    both(servers, "get", "/ctl/", "--prefix", "--limit=2", "--sort-by=MODIFY", "--order=DESCEND")
    both(servers, "get", "/ctl/a", "/ctl/c")
    both(servers, "get", "/ctl/", "--from-key", "--print-value-only")
    both(servers, "get", "/ctl/", "--prefix", "--count-only", "-w", "fields")
    jsons = {
        name: json.loads(ctl(s, "get", "/ctl/", "--prefix", "-w", "json"))
        for name, s in servers.items()
    }
    for out in jsons.values():
        for key in ("cluster_id", "member_id", "revision", "raft_term"):
            out["header"].pop(key)
        for kv in out["kvs"]:
            kv.pop("create_revision")
            kv.pop("mod_revision")
    assert jsons["kvstore"] == jsons["etcd"]
    assert both(servers, "del", "/ctl/b") == "1\n"
    assert both(servers, "del", "/ctl/", "--prefix", "--prev-kv") == "2\n/ctl/a\n1\n/ctl/c\n3\n"
    assert both(servers, "get", "/ctl/", "--prefix") == ""


def test_txn_from_stdin(servers: dict[str, Server]) -> None:
    both(servers, "put", "/txn/k", "v1")
    script = 'value("/txn/k") = "v1"\n\nput /txn/k v2\n\nget /txn/k\n\n'
    assert both(servers, "txn", stdin=script) == "SUCCESS\n\nOK\n"
    assert both(servers, "txn", stdin=script) == "FAILURE\n\n/txn/k\nv2\n"


def test_watch_replays_history(servers: dict[str, Server]) -> None:
    revs = {}
    for name, s in servers.items():
        out = json.loads(ctl(s, "put", "/watch/a", "1", "-w", "json"))
        revs[name] = out["header"]["revision"]
        ctl(s, "put", "/watch/b", "2")
        ctl(s, "del", "/watch/a")
    outs = {}
    for name, s in servers.items():
        proc = subprocess.Popen(
            [
                str(etcdctl_path()),
                f"--endpoints={','.join(s.endpoints)}",
                "watch",
                "/watch/",
                "--prefix",
                f"--rev={revs[name]}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        lines: list[str] = []
        done = threading.Event()

        def read(
            p: subprocess.Popen[str] = proc, out: list[str] = lines, ev: threading.Event = done
        ) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                out.append(line)
                if len(out) >= 7:
                    break
            ev.set()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        done.wait(timeout=20)
        proc.kill()
        proc.wait()
        outs[name] = "".join(lines)
    expected = "PUT\n/watch/a\n1\nPUT\n/watch/b\n2\nDELETE\n"
    assert outs == {"etcd": expected, "kvstore": expected}


def test_lease_commands(servers: dict[str, Server]) -> None:
    masked = {}
    for name, s in servers.items():
        out = ctl(s, "lease", "grant", "60")
        m = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\(60s\)\n", out)
        assert m, out
        lid = m.group(1)
        ctl(s, "put", "/lease/k", "v", f"--lease={lid}")
        steps = [
            ctl(s, "lease", "keep-alive", "--once", lid),
            ctl(s, "lease", "timetolive", lid, "--keys"),
            ctl(s, "lease", "list"),
            ctl(s, "lease", "revoke", lid),
            ctl(s, "lease", "timetolive", lid),
            ctl(s, "get", "/lease/k"),
        ]
        text = "".join(steps).replace(lid, "<ID>")
        masked[name] = re.sub(r"remaining\(\d+s\)", "remaining(Ns)", text)
    assert masked["kvstore"] == masked["etcd"]
    assert "lease <ID> keepalived with TTL(60)" in masked["etcd"]


def test_member_list_and_endpoints(servers: dict[str, Server]) -> None:
    for name, s in servers.items():
        out = ctl(s, "member", "list")
        rows = sorted(line.split(", ") for line in out.splitlines())
        assert [r[1] for r in rows] == ["started"] * 3, (name, out)
        assert sorted(r[3] for r in rows) == sorted(m.peer_url for m in s.members)
        assert sorted(r[4] for r in rows) == sorted(m.client_url for m in s.members)

        status = json.loads(ctl(s, "endpoint", "status", "-w", "json"))
        assert len(status) == 3
        leaders = {st["Status"]["leader"] for st in status}
        assert len(leaders) == 1 and 0 not in leaders
        assert sum(st["Status"]["header"]["member_id"] in leaders for st in status) == 1
        assert all(st["Status"]["version"].startswith("3.5") for st in status)

        health = ctl(s, "endpoint", "health")
        assert health.count("is healthy: successfully committed proposal") == 3, health


def test_compaction_and_errors(servers: dict[str, Server]) -> None:
    revs = {}
    for name, s in servers.items():
        ctl(s, "put", "/cmp/k", "1")
        out = json.loads(ctl(s, "put", "/cmp/k", "2", "-w", "json"))
        revs[name] = out["header"]["revision"]
    outs = {}
    for name, s in servers.items():
        rev = revs[name]
        outs[name] = [
            ctl(s, "compaction", str(rev)).replace(str(rev), "<REV>"),
            ctl(s, "get", "/cmp/k", f"--rev={rev - 1}", check=False).replace(str(rev), "<REV>"),
            ctl(s, "get", "/cmp/k", "--rev=100000000", check=False),
            ctl(s, "put", "", "v", check=False),
        ]
    assert outs["kvstore"] == outs["etcd"]
    assert "required revision has been compacted" in outs["etcd"][1]


def _lock_and_elect(server: Server) -> list[str]:
    """etcdctl's lock and election recipes (client-side, over KV, watch and leases)."""
    base = [str(etcdctl_path()), f"--endpoints={','.join(server.endpoints)}"]
    env = dict(os.environ, ETCDCTL_API="3")

    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*base, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )

    def owners(prefix: str) -> list[str]:
        return ctl(server, "get", prefix, "--prefix", "--keys-only").split()

    outputs = []
    holder = spawn("lock", "/locks/b")
    waiter = None
    try:
        assert holder.stdout is not None
        held = holder.stdout.readline()  # printed once the lock is held
        assert held.startswith("/locks/b/"), held
        waiter = spawn("lock", "/locks/b", "--", "sh", "-c", 'echo "got $ETCD_LOCK_KEY"')
        deadline = time.monotonic() + 30
        while len(owners("/locks/b")) < 2:  # the waiter queued behind the holder
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.1)  # polling another process's progress
        assert waiter.poll() is None, "the waiter ran while the lock was held"
        holder.send_signal(signal.SIGINT)  # etcdctl releases the lock on interrupt
        out, _ = waiter.communicate(timeout=30)
        assert waiter.returncode == 0
        outputs.append(re.sub(r"/[0-9a-f]+$", "/<LEASE>", out.strip()))
        outputs.append(" ".join(owners("/locks/b")))
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    candidate = spawn("elect", "/election/e", "alice")
    try:
        assert candidate.stdout is not None
        key = candidate.stdout.readline().strip()  # printed once elected, then the value
        assert key.startswith("/election/e/"), key
        assert candidate.stdout.readline().strip() == "alice"
        listener = spawn("elect", "-l", "/election/e")
        try:
            assert listener.stdout is not None
            seen = [listener.stdout.readline().strip(), listener.stdout.readline().strip()]
            outputs.append(" ".join(seen).replace(key, "<KEY>"))
        finally:
            listener.kill()
            listener.wait()
    finally:
        candidate.send_signal(signal.SIGINT)  # resigns
        candidate.wait(timeout=30)
    outputs.append(" ".join(owners("/election/e")))
    return outputs


def test_lock_and_elect(servers: dict[str, Server]) -> None:
    outs = {name: _lock_and_elect(s) for name, s in servers.items()}
    assert outs["kvstore"] == outs["etcd"]
    assert outs["etcd"] == ["got /locks/b/<LEASE>", "", "<KEY> alice", ""]
