"""Run component processes (controller-manager, scheduler, node-agent) and observe them.

Each process prints JSON-lines events on stdout (see ``controllers.events``);
:class:`Processes` reads them in its task group. :class:`History` watches the
store from a start revision and replays every revision, so tests can judge
invariants (the live pod count, bindings) at every point of the history.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from controllers.objects import Obj
from controllers.store import decode
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client

Event = dict[str, Any]


@dataclass
class Proc:
    name: str
    process: anyio.abc.Process
    events: list[Event] = field(default_factory=list)
    reading: bool = True

    def find(self, predicate: Callable[[Event], bool], after: int = 0) -> Event | None:
        return next((e for e in self.events[after:] if predicate(e)), None)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class Processes:
    """Starts processes in a task group that reads their events; kills them all at close."""

    def __init__(self, tasks: anyio.abc.TaskGroup, endpoints: list[str], log_dir: Path) -> None:
        self._tasks = tasks
        self.endpoints = endpoints
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}
        self._changed = anyio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def start(self, name: str, module: str, *args: str) -> Proc:
        command = [
            sys.executable,
            "-m",
            f"controllers.{module}",
            "--endpoints",
            ",".join(self.endpoints),
            *args,
        ]
        with (self.log_dir / f"{name}.log").open("ab") as stderr:
            process = await anyio.open_process(command, stderr=stderr)
        proc = Proc(name, process)
        self.procs[name] = proc
        self._tasks.start_soon(self._read, proc)
        await self.wait_for(lambda p, e: p is proc and e["event"] == "ready")
        return proc

    async def _read(self, proc: Proc) -> None:
        assert proc.process.stdout is not None
        buffer = b""
        async for chunk in proc.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    proc.events.append(json.loads(line))
            self._wake()
        proc.reading = False
        self._wake()

    def marks(self) -> dict[str, int]:
        return {name: len(p.events) for name, p in self.procs.items()}

    async def wait_for(
        self,
        predicate: Callable[[Proc, Event], bool],
        timeout: float = 60.0,
        after: dict[str, int] | None = None,
    ) -> tuple[Proc, Event]:
        """The first event of any process (after the marks) matching ``predicate``."""
        after = after or {}
        with anyio.fail_after(timeout):
            while True:
                for proc in list(self.procs.values()):
                    for event in proc.events[after.get(proc.name, 0) :]:
                        if predicate(proc, event):
                            return proc, event
                await self._changed.wait()

    def kill(self, name: str) -> float:
        """SIGKILL a process; returns the CLOCK_MONOTONIC time of the kill."""
        self.procs[name].process.kill()
        return time.monotonic()

    async def close(self) -> None:
        for proc in self.procs.values():
            if proc.process.returncode is None:
                proc.process.send_signal(signal.SIGTERM)
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            for proc in self.procs.values():
                await proc.process.wait()
        for proc in self.procs.values():
            if proc.process.returncode is None:
                proc.process.kill()
                with anyio.CancelScope(shield=True):
                    await proc.process.wait()


class History:
    """Replays the store from ``start`` on, revision by revision, over a key prefix."""

    def __init__(self, client: Client, prefix: str, start: int) -> None:
        self.client = client
        self.prefix = prefix
        self.start = start
        self.objects: dict[str, Obj] = {}  # key (relative to prefix) -> latest object
        self.revision = start - 1
        self.checks: list[Callable[[History, int], None]] = []
        self._changed = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with self.client.watch(self.prefix, prefix=True, start_revision=self.start) as watch:
            task_status.started()
            async for batch in watch:
                by_revision: dict[int, list[kv_pb2.Event]] = {}
                for event in batch.events:
                    by_revision.setdefault(event.kv.mod_revision, []).append(event)
                for revision in sorted(by_revision):
                    for event in by_revision[revision]:
                        key = event.kv.key.decode()[len(self.prefix) :]
                        if event.type == kv_pb2.Event.DELETE:
                            self.objects.pop(key, None)
                        else:
                            self.objects[key] = decode(event.kv.value, event.kv.mod_revision)
                    self.revision = revision
                    for check in self.checks:
                        check(self, revision)
                self.revision = max(self.revision, batch.revision)
                self._changed.set()
                self._changed = anyio.Event()

    def of(self, resource: str) -> dict[str, Obj]:
        head = f"/{resource}/"
        return {k[len(head) :]: v for k, v in self.objects.items() if k.startswith(head)}

    async def wait_until(self, predicate: Callable[[History], bool], timeout: float = 60.0) -> None:
        with anyio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()
