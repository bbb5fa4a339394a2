"""The stall watchdog logs what the event loop runs while it is held up."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from kvstore.server.stallwatch import StallWatch


def _a_distinctively_named_blocking_call(watch: StallWatch, reported: threading.Event) -> None:
    # The stall under test: it lasts until the watchdog has reported it and then looked
    # twice more (a long stall is reported once).
    assert reported.wait(timeout=60), "the watchdog never reported the stall"
    checks = watch.checks
    deadline = time.monotonic() + 60
    while watch.checks < checks + 2:
        assert time.monotonic() < deadline, "the watchdog stopped looking"
        time.sleep(0.05)


async def test_a_stall_is_reported_once_with_the_code_holding_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reported = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reported.set()

    watch = StallWatch(0.2, "member 1")
    logger = logging.getLogger("kvstore.server.stallwatch")
    handler = Signal(level=logging.WARNING)
    logger.addHandler(handler)
    beats = asyncio.create_task(watch.run_beats())
    try:
        await asyncio.sleep(0)  # (the beat task starts the watchdog)
        _a_distinctively_named_blocking_call(watch, reported)
    finally:
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert len(messages) == 1 and watch.reports == 1, messages
    assert messages[0].startswith("member 1: the event loop has been held up")
    assert "_a_distinctively_named_blocking_call" in messages[0]
    assert "reported.wait" in messages[0]
