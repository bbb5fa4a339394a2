"""Ports for local clusters (tests, ``--free-ports``) that nothing else on the machine takes.

Binding port 0 and closing the socket is not enough: the kernel hands such
ports out of its ephemeral range, and any outgoing connection on the machine
can take one before the member binds it. So ports are handed out from outside
``ip_local_port_range``, where the kernel never picks one on its own, and a
cursor kept in a file under a cross-process lock (``flock``) makes every
allocator on the machine walk the range in turn: a port comes round again
only after the whole range was handed out. A port still bound by someone is
skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PORT_RANGE_FLOOR = 20000
"""Lowest port handed out: below it live well-known and registered services."""
PORT_MAX = 65535
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_DEFAULT_EPHEMERAL = (32768, 60999)
MIN_RANGE_PORTS = 1000
"""Fewer ports than this outside the ephemeral range is a misconfigured machine."""
STATE_DIR_ENV = "KVSTORE_PORTS_DIR"
"""Overrides where the cursor file lives (tests of the allocator use their own)."""


class PortsExhaustedError(RuntimeError):
    """No free port was found in a whole turn of the range."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (inclusive)."""
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return LINUX_DEFAULT_EPHEMERAL


def allocation_range() -> list[int]:
    """Every port the allocator may hand out, in order: those the kernel never picks."""
    low, high = ephemeral_range()
    ports = [*range(PORT_RANGE_FLOOR, min(low, PORT_MAX + 1)), *range(high + 1, PORT_MAX + 1)]
    if len(ports) < MIN_RANGE_PORTS:
        raise PortsExhaustedError(
            f"only {len(ports)} ports lie outside the ephemeral range {low}-{high}; "
            f"narrow net.ipv4.ip_local_port_range"
        )
    return ports


def _state_dir() -> Path:
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"kvstore-ports-{os.getuid()}"


@contextlib.contextmanager
def _locked_cursor() -> Iterator[tuple[int, list[int]]]:
    """Yield the cursor under the machine-wide lock; the caller's update is written back."""
    directory = _state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "cursor", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0)
        try:
            cursor = int(raw.decode() or "0")
        except ValueError:
            cursor = 0
        box = [cursor]
        yield cursor, box
        data = str(box[0]).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)  # releases the lock


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As a server binds: a port whose last connection lingers in TIME_WAIT is usable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct ports that no other allocator holds and the kernel won't take.

    Safe across processes: two callers anywhere on the machine never get the
    same port until the whole range has gone round.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if count == 0:
        return []
    candidates = allocation_range()
    chosen: list[int] = []
    with _locked_cursor() as (start, box):
        position = start % len(candidates)
        for _ in range(len(candidates)):
            port = candidates[position]
            position = (position + 1) % len(candidates)
            if _bindable(port, host):
                chosen.append(port)
                if len(chosen) == count:
                    break
        box[0] = position
    if len(chosen) < count:
        raise PortsExhaustedError(f"found {len(chosen)} of {count} free ports")
    return chosen
