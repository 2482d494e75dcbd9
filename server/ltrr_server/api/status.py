"""The one place where domain errors become gRPC status codes (``api.routes`` applies it to every method)."""

from __future__ import annotations

from typing import Any

import grpc

from ltrr_server import errors

_CODES: list[tuple[type[errors.LtrrError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]

# The servicer context, as every handler here takes it.
Ctx = grpc.aio.ServicerContext[Any, Any]


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception; anything unexpected is INTERNAL.

    >>> code_for(errors.NotFound("x")).name
    'NOT_FOUND'
    """
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def message_for(exc: BaseException) -> str:
    return exc.message if isinstance(exc, errors.LtrrError) else "internal error"
