"""Fan-out of live updates to the browsers connected over Server-Sent Events.

Each subscriber gets a bounded queue. A subscriber that falls that far behind
is disconnected rather than allowed to hold memory or slow the others; its
browser reconnects (EventSource does so by itself) and starts again from a
fresh snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

log = logging.getLogger(__name__)

# Updates one browser may have queued before it is dropped (it reconnects and resyncs).
SUBSCRIBER_BUFFER = 2000
# Browsers connected at once; more are refused with 503 (each holds a queue).
MAX_SUBSCRIBERS = 64


@dataclass(frozen=True, slots=True)
class Update:
    """One SSE event: its name and a JSON-serialisable payload."""

    event: str
    data: Any


Snapshot = Callable[[], list[Update]]


class TooManySubscribers(Exception):
    pass


@dataclass
class Subscription:
    """One browser's updates (``async for update in subscription.updates``); close when done."""

    hub: Hub
    send: MemoryObjectSendStream[Update]
    updates: MemoryObjectReceiveStream[Update]

    def close(self) -> None:
        self.hub._drop(self.send)
        self.updates.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Hub:
    def __init__(self) -> None:
        self._sources: list[Snapshot] = []
        self._subscribers: set[MemoryObjectSendStream[Update]] = set()
        self._closed = False

    def add_source(self, snapshot: Snapshot) -> None:
        """``snapshot()`` gives a new subscriber the current state of one part of the page."""
        self._sources.append(snapshot)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: str, data: Any) -> None:
        update = Update(event, data)
        for send in list(self._subscribers):
            try:
                send.send_nowait(update)
            except anyio.WouldBlock:
                log.info("a browser fell %d updates behind; dropping it", SUBSCRIBER_BUFFER)
                self._drop(send)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(send)

    def _drop(self, send: MemoryObjectSendStream[Update]) -> None:
        self._subscribers.discard(send)
        send.close()

    def open(self) -> Subscription:
        """The current state of every source, then each update as it is published."""
        if self._closed:
            raise TooManySubscribers("the dashboard is shutting down")
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise TooManySubscribers(f"{MAX_SUBSCRIBERS} browsers are connected already")
        send, receive = anyio.create_memory_object_stream[Update](SUBSCRIBER_BUFFER)
        for snapshot in self._sources:
            for update in snapshot():
                send.send_nowait(update)
        self._subscribers.add(send)
        return Subscription(self, send, receive)

    def close(self) -> None:
        """End every subscription (shutdown): their handlers return and connections close."""
        self._closed = True
        for send in list(self._subscribers):
            self._drop(send)
