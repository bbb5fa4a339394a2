"""Running a program's main coroutine: on uvloop where it is installed, else asyncio's loop.

uvloop's loop costs less CPU per callback and per socket operation; grpc.aio
(our client library) and anyio run on it unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

import anyio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """``anyio.run`` on uvloop when available."""
    return anyio.run(main, *args, backend_options={"use_uvloop": uvloop_available()})


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when available."""
    if uvloop_available():
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
