"""Errors of the dashboard's API, shaped as Kubernetes' Status (code, reason, message)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request refused; ``code`` and ``reason`` as Kubernetes' Status (404 NotFound, ...)."""

    code = 400
    reason = "BadRequest"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(ApiError):
    pass


class Invalid(ApiError):
    code, reason = 422, "Invalid"


class NotFound(ApiError):
    code, reason = 404, "NotFound"


class Conflict(ApiError):
    code, reason = 409, "Conflict"


class AlreadyExists(ApiError):
    code, reason = 409, "AlreadyExists"


class Gone(ApiError):
    """The revision asked for has been compacted away."""

    code, reason = 410, "Gone"


class Unavailable(ApiError):
    """The store did not answer (no leader, unreachable)."""

    code, reason = 503, "ServiceUnavailable"
