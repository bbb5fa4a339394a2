"""Passwords: bcrypt hashes (etcd's cost 10 by default), computed off the event loop.

bcrypt takes tens of milliseconds on purpose. Hashing and checking run on a
small pool of their own (the bcrypt library releases the GIL), so a stream of
logins neither blocks the raft loop nor queues ahead of its WAL writes on the
default executor.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import bcrypt

from kvstore.errors import PasswordTooLongError, TooManyRequestsError

T = TypeVar("T")

DEFAULT_COST = 10
"""etcd's --bcrypt-cost default (Go's bcrypt.DefaultCost)."""
MIN_COST = 4
MAX_COST = 31
MAX_PASSWORD_BYTES = 72
"""bcrypt's limit; Go's bcrypt refuses longer passwords, and so do we."""
HASHING_THREADS = max(1, (os.cpu_count() or 2) // 2)
"""Bound on bcrypt work at once: half the cores, so a storm of logins (each tens of
milliseconds of CPU by design) leaves the raft loop and the peers a core to run on."""

MAX_WAITING = 256
"""Bound on bcrypt jobs queued or running: past it a login or password change is refused
with etcd's "too many requests" (a login storm must not grow the queue without end)."""

_pool = ThreadPoolExecutor(max_workers=HASHING_THREADS, thread_name_prefix="bcrypt")
_waiting = 0


def valid_cost(cost: int) -> int:
    """``cost`` if bcrypt accepts it, else the default (etcd does the same)."""
    return cost if MIN_COST <= cost <= MAX_COST else DEFAULT_COST


def _encoded(password: str) -> bytes:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        raise PasswordTooLongError()
    return raw


def hash_now(password: str, cost: int) -> str:
    """The hash as etcd sends it through Raft: base64 of the bcrypt string (blocking)."""
    hashed = bcrypt.hashpw(_encoded(password), bcrypt.gensalt(rounds=cost))
    return base64.b64encode(hashed).decode()


def matches_now(password: str, hashed: bytes) -> bool:
    """Whether ``password`` matches a stored bcrypt hash (blocking)."""
    try:
        return bcrypt.checkpw(password.encode(), hashed)
    except ValueError:  # not a bcrypt hash (a user without password), or too long
        return False


async def _off_loop(work: Callable[..., T], *args: Any) -> T:
    global _waiting
    if _waiting >= MAX_WAITING:
        raise TooManyRequestsError()
    _waiting += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, work, *args)
    finally:
        _waiting -= 1


async def hash_password(password: str, cost: int) -> str:
    return await _off_loop(hash_now, password, cost)


async def password_matches(password: str, hashed: bytes) -> bool:
    return await _off_loop(matches_now, password, hashed)
