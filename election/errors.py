"""Errors of the election package."""

from __future__ import annotations


class ElectionError(Exception):
    """Base of this package's errors."""


class ConfigError(ElectionError, ValueError):
    """The elector's configuration is inconsistent; the message says how."""


class LeadershipLost(ElectionError):
    """This process no longer holds the lock; nothing was written."""


class NotLeaderError(ElectionError):
    """etcd-style election: the caller is not (or no longer) the leader."""


class NoLeaderError(ElectionError):
    """etcd-style election: nobody is campaigning."""


class SessionExpiredError(ElectionError):
    """The session's lease expired while waiting; the campaign or lock was lost."""
