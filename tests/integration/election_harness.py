"""Run contender processes and read their JSON-lines events."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

CONTENDER = Path(__file__).resolve().parents[2] / "election" / "contender.py"
Event = dict[str, Any]


@dataclass
class Contender:
    identity: str
    process: anyio.abc.Process
    events: list[Event] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    reading: bool = True

    def _add(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 30.0, after: int = 0
    ) -> Event:
        """The first event (from index ``after``) matching ``predicate``, awaiting it if needed."""
        with anyio.fail_after(timeout):
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                if self.process.returncode is not None and not self.reading:
                    raise AssertionError(f"{self.identity} exited; events: {self.events[-5:]}")
                await self.changed.wait()

    def has(self, name: str, after: int = 0) -> bool:
        return any(e["event"] == name for e in self.events[after:])

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)


class ContenderPool:
    """Starts contenders in a task group that reads their output; kills them all at exit."""

    def __init__(self, tasks: anyio.abc.TaskGroup, endpoints: list[str], log_dir: Path) -> None:
        self._tasks = tasks
        self.endpoints = endpoints
        self.log_dir = log_dir
        self.contenders: list[Contender] = []

    async def start(self, identity: str, *extra: str) -> Contender:
        command = [
            sys.executable,
            str(CONTENDER),
            "--endpoints",
            ",".join(self.endpoints),
            "--identity",
            identity,
            *extra,
        ]
        with (self.log_dir / f"{identity}.log").open("ab") as stderr:
            process = await anyio.open_process(command, stderr=stderr)
        contender = Contender(identity, process)
        self.contenders.append(contender)
        self._tasks.start_soon(self._read, contender)
        await contender.wait_for(lambda e: e["event"] == "ready")
        return contender

    async def _read(self, contender: Contender) -> None:
        assert contender.process.stdout is not None
        buffer = b""
        async for chunk in contender.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    contender._add(json.loads(line))
        contender.reading = False
        contender._add({"event": "eof", "t": 0.0})

    async def leader(self, timeout: float = 30.0, after: dict[str, int] | None = None) -> Contender:
        """The contender that next reports 'started' (events after the given indexes)."""
        after = after or {}
        with anyio.fail_after(timeout):
            while True:
                for c in self.contenders:
                    if c.has("started", after.get(c.identity, 0)):
                        return c
                waits = [c.changed for c in self.contenders]
                async with anyio.create_task_group() as any_change:

                    async def wake(event: anyio.Event, scope: anyio.CancelScope) -> None:
                        await event.wait()
                        scope.cancel()

                    for event in waits:
                        any_change.start_soon(wake, event, any_change.cancel_scope)

    def marks(self) -> dict[str, int]:
        """Current event counts, to look only at what happens next."""
        return {c.identity: len(c.events) for c in self.contenders}

    async def close(self) -> None:
        for c in self.contenders:
            if c.process.returncode is None:
                c.process.send_signal(signal.SIGCONT)
                c.process.kill()
        with anyio.CancelScope(shield=True):
            for c in self.contenders:
                await c.process.wait()
