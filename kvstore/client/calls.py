"""Awaiting grpc.aio calls so that a cancel scope's cancellation stays the scope's.

grpc.aio answers a cancellation of the task awaiting a call by cancelling
its own task again, without the canceller's message (``UnaryUnaryCall``
cancels itself when interrupted), so the ``CancelledError`` that comes back
is not the one anyio sent: anyio's scope (``move_on_after``, ``fail_after``)
does not recognise it and lets it through, and it ends the whole task group
above as if that had been cancelled (a controller exited with status 0 when
a timed-out revoke met a deadline). So the call runs in a task of its own,
awaited through a shield: the caller's cancellation reaches the caller
untouched, and the call is cancelled behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kvstore.client.errors import UnavailableError, cancelled_inside_grpc

T = TypeVar("T")


async def await_call(
    call: Awaitable[T], what: str, cancel: Callable[[], object] | None = None
) -> T:
    """The outcome of ``call``; ``cancel`` (by default: cancelling the task that awaits
    it) stops it if the caller is cancelled first.

    A call that grpc.aio cancels on its own (nobody cancelled the caller)
    fails with :class:`UnavailableError`: a call that ended without a status.
    """
    task = asyncio.ensure_future(call)
    task.add_done_callback(_consume_outcome)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            # The caller was cancelled: the call goes too, its outcome unread.
            (cancel or task.cancel)()
            raise
        if task.cancelled() and cancelled_inside_grpc():
            raise UnavailableError(f"{what} was cancelled inside gRPC") from None
        raise


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here, so an abandoned call logs nothing
