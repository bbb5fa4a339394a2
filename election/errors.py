"""Errors of the election package."""

from __future__ import annotations


class ElectionError(Exception):
    """Base of this package's errors."""


class ConfigError(ElectionError, ValueError):
    """The elector's configuration is inconsistent; the message says how."""


class LeadershipLost(ElectionError):
    """This process no longer holds the lock; nothing was written."""
