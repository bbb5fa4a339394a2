"""Structured JSON-lines events on stdout, for tests and demos to observe.

Each line is one JSON object with ``event``, ``component`` and ``t`` (the
CLOCK_MONOTONIC reading, shared by every process on the machine, so tests can
measure intervals across processes). Logs go to stderr as usual.
"""

from __future__ import annotations

import json
import sys
import time

_component = ""


def set_component(name: str) -> None:
    global _component
    _component = name


def emit(event: str, **fields: object) -> None:
    line = json.dumps({"event": event, "component": _component, "t": time.monotonic(), **fields})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
