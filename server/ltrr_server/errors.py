"""Domain errors. Each carries what a caller needs; ``api.status`` maps them to gRPC codes."""

from __future__ import annotations


class LtrrError(Exception):
    """Base of every error ltrr reports to a caller."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(LtrrError):
    """A request field is malformed; ``field`` names it (``actions[2].id``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message, field=field)


class NotFound(LtrrError):
    """A named thing (policy, event, snapshot) does not exist."""


class AlreadyExists(LtrrError):
    """A create request names something that exists already."""


class PermissionDenied(LtrrError):
    """The caller's key may not do this (another tenant's keys, a role it lacks)."""


class Overloaded(LtrrError):
    """A configured bound (pending joins, write queue) is full: retry later."""


class FailedPrecondition(LtrrError):
    """The system is not in a state that allows the request (shutting down, ...)."""


class Unavailable(LtrrError):
    """The service cannot answer now (starting, its data being rebuilt): retry later."""
