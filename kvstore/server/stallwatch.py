"""A watchdog thread that tells what held the event loop up, while it is held up.

The ticker can only say afterwards that the loop was held up, and for how long; by then
nothing shows what ran. This thread looks during the stall: when the loop has not come
round for ``threshold`` seconds it logs the loop thread's Python stack, once a stall.
That stack is the code holding the loop, or the call into C that blocks it (an fsync,
an LMDB commit: both release the GIL, so the watchdog can run and look). C code that
keeps the GIL is seen only as it lets go: the stack then shows the line just after it.

Cost: one wake-up of a sleeping thread every ``threshold / 2`` seconds, and a task on
the loop that beats every ``threshold / 4``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)

STACK_FRAMES = 40
"""Innermost frames logged (the loop's own frames lie outside them)."""


class StallWatch:
    """Reports the loop thread's stack when ``beat`` has not been called for ``threshold``."""

    def __init__(self, threshold: float, name: str = "") -> None:
        assert threshold > 0
        self.threshold = threshold
        self.name = name
        self.reports = 0
        self.checks = 0
        self._last_beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """The loop came round (called from the loop thread)."""
        self._last_beat = time.monotonic()

    async def run_beats(self) -> None:
        """Beat from the loop until cancelled; the watchdog runs meanwhile."""
        self._loop_thread = threading.get_ident()
        self.beat()
        self._start()
        try:
            while True:
                await asyncio.sleep(self.threshold / 4)
                self.beat()
        finally:
            self.stop()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="stallwatch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _watch(self) -> None:
        reported_beat = -1.0
        while not self._stopped.wait(self.threshold / 2):
            self.checks += 1
            last = self._last_beat
            stalled = time.monotonic() - last
            if stalled < self.threshold or last == reported_beat:
                continue
            reported_beat = last
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame, limit=STACK_FRAMES)) if frame else "?"
            self.reports += 1
            log.warning(
                "%sthe event loop has been held up %.0f ms so far, running:\n%s",
                f"{self.name}: " if self.name else "",
                stalled * 1000,
                stack.rstrip(),
            )
