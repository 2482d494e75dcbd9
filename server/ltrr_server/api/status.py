"""The one place where domain errors become gRPC status codes, and RPC latency is recorded."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from ltrr_server import errors
from ltrr_server.metrics import Metrics

log = logging.getLogger(__name__)

_CODES: list[tuple[type[errors.LtrrError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
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


S = TypeVar("S", bound="HasMetrics")
Q = TypeVar("Q")
R = TypeVar("R")


class HasMetrics(Protocol):
    _metrics: Metrics


Handler = Callable[[S, Q, Ctx], Awaitable[R]]


def unary(method: str) -> Callable[[Handler[S, Q, R]], Handler[S, Q, R]]:
    """Wraps a unary servicer method: maps errors to status codes, times the call by code."""

    def wrap(fn: Handler[S, Q, R]) -> Handler[S, Q, R]:
        @functools.wraps(fn)
        async def handler(self: S, request: Q, context: Ctx) -> R:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await fn(self, request, context)
            except errors.LtrrError as exc:
                code = code_for(exc)
                await context.abort(code, message_for(exc))
                raise  # abort raises AbortError; unreachable in practice
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                await context.abort(code, "internal error")
                raise
            finally:
                self._metrics.observe_rpc(method, code.name, time.perf_counter() - start)

        return handler

    return wrap
