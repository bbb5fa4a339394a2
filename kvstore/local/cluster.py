"""Run a cluster of OUR members (``kvstore serve``) as real processes on loopback.

Built on :class:`kvstore.local.processes.ProcessCluster`, like the reference
etcd, so tests, the chaos harness and benchmarks can swap one for the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kvstore.local.processes import (
    HOST,
    MemberProcess,
    ProcessCluster,
    StartError,
    http_health,
)
from kvstore.ports import free_ports


class KVStartError(StartError):
    """One of our members did not become healthy in time."""


@dataclass
class KVMember(MemberProcess):
    http_port: int = 0
    _pump: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        """Base URL of /health, /metrics, /version (https, like the client URL, with TLS)."""
        return f"{self.scheme}://{HOST}:{self.http_port}"


def _pump(name: str, src: IO[bytes], log_path: Path) -> None:
    with open(log_path, "ab") as log_file:
        for line in iter(src.readline, b""):
            log_file.write(line)
            log_file.flush()
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()


@dataclass
class KVCluster(ProcessCluster[KVMember]):
    """A cluster of ``kvstore serve`` processes.

    ``ports`` gives (client, peer, http) per member; free ports are picked
    when not given. ``stream_logs`` copies members' output to stdout prefixed
    with their names (``kvstore cluster up``) besides their log files.
    """

    ports: list[tuple[int, int, int]] | None = None
    stream_logs: bool = False

    start_error = KVStartError

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
        self.members = [self._member(i, *flat[3 * i : 3 * i + 3]) for i in range(self.size)]

    def _member(self, i: int, client_port: int, peer_port: int, http_port: int) -> KVMember:
        return KVMember(
            name=f"kv{i}",
            client_port=client_port,
            peer_port=peer_port,
            http_port=http_port,
            data_dir=self.root / f"kv{i}.data",
            log_path=self.root / f"kv{i}.log",
            secure=self.tls is not None,
        )

    def _new_member(self, index: int) -> KVMember:
        return self._member(index, *free_ports(3))

    def command(self, member: KVMember) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kvstore.cli.main",
            "serve",
            *self._member_flags(member),
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
        self._popen_logged(member, args, env)

    def _healthy(self, member: KVMember) -> bool:
        context = self.tls.ssl_context() if self.tls is not None else None
        return http_health(f"{member.http_url}/health", context)

    def stop(self, grace: float | None = None) -> None:
        super().stop(grace)
        for member in self.members:
            if member._pump is not None:
                member._pump.join(timeout=2)
