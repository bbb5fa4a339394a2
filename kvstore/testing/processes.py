"""Clusters of real member processes on loopback.

The machinery shared by our own cluster (:mod:`kvstore.testing.cluster`)
and the reference etcd (:mod:`kvstore.testing.etcd`): spawn, wait until
healthy, kill, pause, resume, restart on the same data directory, stop.
Subclasses say how to spawn a member and how to ask it whether it is healthy.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, Self, TypeVar

HOST = "127.0.0.1"


def http_health(url: str) -> bool:
    """True if ``url`` answers etcd's health JSON with ``"health": "true"``."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (urllib.error.URLError, OSError, ValueError):
        return False


class StartError(RuntimeError):
    """A member did not become healthy in time; the message carries its log tail."""


@dataclass
class MemberProcess:
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


M = TypeVar("M", bound=MemberProcess)


@dataclass
class ProcessCluster(Generic[M]):
    """Members as child processes; restarting keeps the data directory, as a reboot would."""

    root: Path
    size: int = 3
    token: str = "kvstore-cluster"
    extra_args: list[str] = field(default_factory=list)
    # If set, member i advertises proxy_ports[i] as its peer URL while it listens
    # on its own peer port: a proxy in between can then cut or slow links (chaos).
    proxy_ports: list[int] | None = None
    members: list[M] = field(default_factory=list)

    start_error: ClassVar[type[StartError]] = StartError
    # How long stop() waits after SIGTERM before SIGKILL.
    stop_grace: ClassVar[float] = 5.0

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _advertised(self, member: M) -> str:
        """The peer URL other members are told to reach ``member`` at."""
        if self.proxy_ports is None:
            return member.peer_url
        return f"http://{HOST}:{self.proxy_ports[self.members.index(member)]}"

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={self._advertised(m)}" for m in self.members)

    def _member_flags(self, member: M) -> list[str]:
        """etcd's flags for a member of a new cluster; our ``kvstore serve`` takes the same."""
        return [
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={self._advertised(member)}",
            f"--initial-cluster={self._initial_cluster()}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
        ]

    def _spawn(self, member: M) -> None:
        raise NotImplementedError

    def _healthy(self, member: M) -> bool:
        raise NotImplementedError

    def _popen_logged(self, member: M, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``args`` with its output appended to the member's log file."""
        with open(member.log_path, "ab") as log_file:
            member.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def start(self, timeout: float = 60.0) -> None:
        for member in self.members:
            self._spawn(member)
        self.wait_healthy(timeout=timeout)

    def wait_healthy(self, members: list[M] | None = None, timeout: float = 60.0) -> None:
        """Wait until each running member reports a healthy cluster (it sees a leader)."""
        deadline = time.monotonic() + timeout
        for member in members or [m for m in self.members if m.running]:
            while not self._healthy(member):
                if not member.running:
                    raise self.start_error(f"{member.name} exited:\n{member.log_tail()}")
                if time.monotonic() > deadline:
                    raise self.start_error(
                        f"{member.name} not healthy after {timeout}s:\n{member.log_tail()}"
                    )
                time.sleep(0.05)  # polling an external process; there is no event to await

    def spawn(self, index: int) -> None:
        """Start member ``index`` (on its existing data directory) without waiting for it."""
        self._spawn(self.members[index])

    def kill(self, index: int) -> None:
        """SIGKILL one member (paused or not) and reap it."""
        member = self.members[index]
        if member.process is not None and member.running:
            member.process.send_signal(signal.SIGCONT)
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

    def stop(self, grace: float | None = None) -> None:
        """Stop every member: SIGTERM, then SIGKILL whoever is still up after the grace period."""
        grace = self.stop_grace if grace is None else grace
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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
