"""Run a cluster of OUR members (``kvstore serve``) as real processes on loopback.

Mirrors :class:`kvstore.testing.etcd.EtcdCluster` (start/stop/kill/pause/resume/
restart, ``endpoints``, ``members`` with ``data_dir``/``log_path``) so tests,
the chaos harness and benchmarks can swap one for the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kvstore.testing.ports import free_ports

HOST = "127.0.0.1"


class KVStartError(RuntimeError):
    """A member did not become healthy in time; the message carries its log tail."""


@dataclass
class KVMember:
    name: str
    client_port: int
    peer_port: int
    http_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _pump: threading.Thread | None = None

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
    def http_url(self) -> str:
        """Base URL of /health, /metrics, /version."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _pump(name: str, src: IO[bytes], log_path: Path) -> None:
    with open(log_path, "ab") as log_file:
        for line in iter(src.readline, b""):
            log_file.write(line)
            log_file.flush()
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()


@dataclass
class KVCluster:
    """A cluster of ``kvstore serve`` processes.

    ``ports`` gives (client, peer, http) per member; free ports are picked
    when not given. ``stream_logs`` copies members' output to stdout prefixed
    with their names (``kvstore cluster up``) besides their log files.
    """

    root: Path
    size: int = 3
    token: str = "kvstore-cluster"
    extra_args: list[str] = field(default_factory=list)
    ports: list[tuple[int, int, int]] | None = None
    stream_logs: bool = False
    proxy_ports: list[int] | None = None
    """If set, member i advertises ``proxy_ports[i]`` as its peer URL (chaos: a proxy
    mesh forwards to the real peer ports), like ``ProxiedEtcdCluster``."""
    members: list[KVMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a cluster needs at least one member")
        if self.ports is not None:
            if len(self.ports) != self.size:
                raise ValueError(f"{len(self.ports)} port triples given for {self.size} members")
            flat = [p for triple in self.ports for p in triple]
        else:
            flat = free_ports(3 * self.size)
        self.root.mkdir(parents=True, exist_ok=True)
        self.members = [
            KVMember(
                name=f"kv{i}",
                client_port=flat[3 * i],
                peer_port=flat[3 * i + 1],
                http_port=flat[3 * i + 2],
                data_dir=self.root / f"kv{i}.data",
                log_path=self.root / f"kv{i}.log",
            )
            for i in range(self.size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _advertised(self, member: KVMember) -> str:
        if self.proxy_ports is None:
            return member.peer_url
        return f"http://{HOST}:{self.proxy_ports[self.members.index(member)]}"

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={self._advertised(m)}" for m in self.members)

    def command(self, member: KVMember) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kvstore.cli.main",
            "serve",
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={self._advertised(member)}",
            f"--initial-cluster={self._initial_cluster()}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            f"--listen-metrics-urls={member.http_url}",
            *self.extra_args,
        ]

    def _spawn(self, member: KVMember) -> None:
        args = self.command(member)
        env = dict(os.environ, GRPC_VERBOSITY="ERROR", PYTHONUNBUFFERED="1")
        if self.stream_logs:
            member.process = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            assert member.process.stdout is not None
            member._pump = threading.Thread(
                target=_pump,
                args=(member.name, member.process.stdout, member.log_path),
                daemon=True,
            )
            member._pump.start()
            return
        log_file = open(member.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            member.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        finally:
            log_file.close()

    def start(self, timeout: float = 60.0) -> None:
        for member in self.members:
            self._spawn(member)
        self.wait_healthy(timeout=timeout)

    def wait_healthy(self, members: list[KVMember] | None = None, timeout: float = 60.0) -> None:
        """Wait until each running member reports a healthy cluster (it sees a leader)."""
        deadline = time.monotonic() + timeout
        for member in members or [m for m in self.members if m.running]:
            while not self.healthy(member):
                if not member.running:
                    raise KVStartError(f"{member.name} exited:\n{member.log_tail()}")
                if time.monotonic() > deadline:
                    raise KVStartError(
                        f"{member.name} not healthy after {timeout}s:\n{member.log_tail()}"
                    )
                time.sleep(0.05)  # polling an external process; there is no event to await

    @staticmethod
    def healthy(member: KVMember) -> bool:
        try:
            with urllib.request.urlopen(f"{member.http_url}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def kill(self, index: int) -> None:
        """SIGKILL one member and reap it."""
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

    def stop(self, grace: float = 5.0) -> None:
        """Stop every member: SIGTERM, then SIGKILL whoever is still up after ``grace`` s."""
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
            if member._pump is not None:
                member._pump.join(timeout=2)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> KVCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
