"""Configuration of a leader elector, validated like client-go's."""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from election.errors import ConfigError

JITTER_FACTOR = 1.2


def default_identity() -> str:
    """``<hostname>_<uuid4>``: unique per process, readable per host."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


class Clock(Protocol):
    """Where the elector reads time. Only ``monotonic`` decides anything."""

    def monotonic(self) -> float: ...

    def wall(self) -> datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class ElectionConfig:
    """Timings and identity, with client-go's defaults (seconds).

    - ``lease_duration``: how long standbys wait, from when they last saw the
      record change, before taking the lock over.
    - ``renew_deadline``: how long the leader keeps trying to renew before it
      gives up leadership; it stops acting before any standby may take over.
    - ``retry_period``: the pause between attempts (jittered by 1.2 for
      standbys, as in client-go).
    """

    name: str
    namespace: str = "default"
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    release_on_cancel: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("lock name must not be empty")
        if not self.namespace:
            raise ConfigError("lock namespace must not be empty")
        if "/" in self.name or "/" in self.namespace:
            raise ConfigError("lock name and namespace must not contain '/'")
        if not self.identity:
            raise ConfigError("identity must not be empty")
        for label in ("lease_duration", "renew_deadline", "retry_period"):
            if getattr(self, label) <= 0:
                raise ConfigError(f"{label} must be greater than zero")
        if self.lease_duration <= self.renew_deadline:
            raise ConfigError(
                f"lease_duration ({self.lease_duration}s) must be greater than "
                f"renew_deadline ({self.renew_deadline}s)"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ConfigError(
                f"renew_deadline ({self.renew_deadline}s) must be greater than "
                f"{JITTER_FACTOR} x retry_period ({JITTER_FACTOR * self.retry_period:g}s)"
            )
