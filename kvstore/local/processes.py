"""Clusters of real member processes on loopback.

The machinery shared by our own cluster (:mod:`kvstore.local.cluster`)
and the reference etcd (:mod:`kvstore.local.etcd`): spawn, wait until
healthy, kill, pause, resume, restart on the same data directory, stop.
Subclasses say how to spawn a member and how to ask it whether it is healthy.
Membership changes (``add_member``, ``remove_member``) go through the real
etcdctl, so they work the same way against both servers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

if TYPE_CHECKING:
    from kvstore.local.tls import Certificates

from kvstore.local.binaries import etcdctl_path

HOST = "127.0.0.1"


def http_health(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True if ``url`` answers etcd's health JSON with ``"health": "true"``."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (urllib.error.URLError, OSError, ValueError):
        return False


class StartError(RuntimeError):
    """A member did not become healthy in time; the message carries its log tail."""


class MembershipError(RuntimeError):
    """etcdctl could not change the membership in time; the message carries its error."""


@dataclass
class MemberProcess:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    # Its --initial-cluster and --initial-cluster-state, fixed when first started
    # (like a member's configuration file); "existing" for a member added at runtime.
    initial_cluster: str | None = None
    initial_cluster_state: str = "new"
    removed: bool = False
    # https client and peer URLs (the cluster's ``tls`` certificates).
    secure: bool = False
    # Extra environment of the member's process (e.g. failpoints).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client (gRPC) listener."""
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.peer_port}"

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
    # If set, members serve https client and peer URLs with these certificates
    # and require client certificates on both (etcd's --client-cert-auth and
    # --peer-client-cert-auth); etcdctl calls present the client certificate.
    tls: Certificates | None = None
    members: list[M] = field(default_factory=list)

    start_error: ClassVar[type[StartError]] = StartError
    # How long stop() waits after SIGTERM before SIGKILL.
    stop_grace: ClassVar[float] = 5.0

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints of the current members (removed ones left out)."""
        return [m.endpoint for m in self.members if not m.removed]

    def _advertised(self, member: M) -> str:
        """The peer URL other members are told to reach ``member`` at."""
        index = self.members.index(member)
        if self.proxy_ports is None or index >= len(self.proxy_ports):
            return member.peer_url
        return f"{member.scheme}://{HOST}:{self.proxy_ports[index]}"

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={self._advertised(m)}" for m in self.members if not m.removed)

    def _member_flags(self, member: M) -> list[str]:
        """etcd's flags for a member; our ``kvstore serve`` takes the same.

        A member added at runtime joins with the membership it was added to.
        """
        if member.initial_cluster is None:
            member.initial_cluster = self._initial_cluster()
        return [
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={self._advertised(member)}",
            f"--initial-cluster={member.initial_cluster}",
            f"--initial-cluster-token={self.token}",
            f"--initial-cluster-state={member.initial_cluster_state}",
            *(self.tls.member_flags() if self.tls is not None else []),
        ]

    def _new_member(self, index: int) -> M:
        """A member (ports, directories) for ``add_member``; not started."""
        raise NotImplementedError

    def _spawn(self, member: M) -> None:
        raise NotImplementedError

    def _healthy(self, member: M) -> bool:
        raise NotImplementedError

    def _popen_logged(self, member: M, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``args`` with its output appended to the member's log file."""
        if member.env:
            env = {**(os.environ if env is None else env), **member.env}
        with open(member.log_path, "ab") as log_file:
            member.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def start(self, timeout: float = 60.0) -> None:
        for member in self.members:
            if not member.removed:
                self._spawn(member)
        self.wait_healthy(timeout=timeout)

    # ----- membership changes

    def etcdctl(
        self, *args: str, endpoints: list[str] | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the real etcdctl against the current members (or the given endpoints)."""
        endpoints = self.endpoints if endpoints is None else endpoints
        tls = self.tls.etcdctl_flags() if self.tls is not None else []
        return subprocess.run(
            [str(etcdctl_path()), f"--endpoints={','.join(endpoints)}", *tls, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, ETCDCTL_API="3"),
        )

    def _etcdctl_until_done(
        self, args: list[str], timeout: float, applied: Callable[[], bool]
    ) -> None:
        """Retry a membership command while the cluster refuses it as not ready yet.

        Both servers refuse changes until the leader has been connected to every
        voter for a while (etcd's strict reconfiguration check). A command that
        timed out may still have been applied: ``applied`` tells, from the member
        list, before it is sent again.
        """
        deadline = time.monotonic() + timeout
        while True:
            proc = self.etcdctl(*args)
            if proc.returncode == 0:
                return
            retryable = any(
                reason in proc.stderr
                for reason in (
                    "unhealthy cluster",
                    "not enough started",
                    "timed out",
                    "leader",
                    "deadline exceeded",
                )
            )
            # Whatever the error (a retry of a removal that was applied says "member not
            # found"), the member list tells whether the change is in.
            if self._listed_and(applied):
                return
            if time.monotonic() > deadline or not retryable:
                raise MembershipError(f"etcdctl {' '.join(args)}: {proc.stderr.strip()}")
            time.sleep(0.5)  # the cluster becomes ready on its own; nothing to await

    def _listed_and(self, check: Callable[[], bool]) -> bool:
        """``check()``, or False while the member list cannot be read."""
        try:
            return check()
        except (MembershipError, ValueError, KeyError):
            return False

    def _members_listed(self) -> list[dict[str, Any]]:
        proc = self.etcdctl("member", "list", "-w", "json")
        if proc.returncode != 0:
            raise MembershipError(f"etcdctl member list: {proc.stderr.strip()}")
        members: list[dict[str, Any]] = json.loads(proc.stdout).get("members", [])
        return members

    def member_id(self, index: int) -> int:
        """The cluster's ID for member ``index`` (looked up by its peer URL)."""
        url = self._advertised(self.members[index])
        for m in self._members_listed():
            if url in m.get("peerURLs", []):
                return int(m["ID"])
        raise MembershipError(f"member {self.members[index].name} ({url}) is not in the cluster")

    def add_member(self, learner: bool = False, start: bool = True, timeout: float = 60.0) -> int:
        """MemberAdd a new member, then (by default) start it joining the cluster.

        Returns its index in ``members``.
        """
        index = len(self.members)
        member = self._new_member(index)
        self.members.append(member)
        url = self._advertised(member)
        args = ["member", "add", member.name, f"--peer-urls={url}"]
        if learner:
            args.append("--learner")
        try:
            self._etcdctl_until_done(
                args,
                timeout,
                lambda: any(url in m.get("peerURLs", []) for m in self._members_listed()),
            )
        except MembershipError:
            self.members.pop()
            raise
        member.initial_cluster = self._initial_cluster()
        member.initial_cluster_state = "existing"
        if start:
            self._spawn(member)
            self.wait_healthy([member], timeout=timeout)
        return index

    def promote_member(self, index: int, timeout: float = 60.0) -> None:
        """Promote learner ``index`` once it has caught up with the leader."""
        member_id = f"{self.member_id(index):x}"
        # Not through the learner itself: a learner refuses MemberPromote.
        voters = [m.endpoint for i, m in enumerate(self.members) if i != index and not m.removed]
        deadline = time.monotonic() + timeout
        while True:
            proc = self.etcdctl("member", "promote", member_id, endpoints=voters)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline or "in sync with leader" not in proc.stderr:
                raise MembershipError(f"etcdctl member promote: {proc.stderr.strip()}")
            time.sleep(0.2)  # the learner catches up on its own; nothing to await

    def remove_member(self, index: int, timeout: float = 60.0) -> None:
        """MemberRemove member ``index``; a running member then stops by itself."""
        member = self.members[index]
        member_id = f"{self.member_id(index):x}"
        self._etcdctl_until_done(
            ["member", "remove", member_id],
            timeout,
            lambda: all(f"{int(m['ID']):x}" != member_id for m in self._members_listed()),
        )
        member.removed = True
        if member.process is not None:
            try:
                member.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise MembershipError(
                    f"{member.name} still runs {timeout}s after its removal:\n{member.log_tail()}"
                ) from None

    def wait_healthy(self, members: list[M] | None = None, timeout: float = 60.0) -> None:
        """Wait until each running member reports a healthy cluster (it sees a leader)."""
        deadline = time.monotonic() + timeout
        for member in members or [m for m in self.members if m.running and not m.removed]:
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
