"""Go-style duration strings, as etcd's and Kubernetes' flags take them."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration string ("40s", "5m", "1.5s", "1m30s", "0") in seconds."""
    text = text.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    position, total = 0, 0.0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if not match:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNIT[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total
