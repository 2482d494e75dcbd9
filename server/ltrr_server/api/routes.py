"""Every method of every ltrr service, registered before the server starts and bound to its
servicer once that service's parts are ready.

The port is bound, and health answers, before the first-start work and the restore run: until a
service is attached its calls get UNAVAILABLE naming what it waits for. Here, in one place for
every method:

- a request that does not decode (a truncated message, invalid UTF-8 in a string field, nesting
  too deep) gets INVALID_ARGUMENT naming the request, never the parser's exception;
- domain errors become their status codes (``api.status``), anything else INTERNAL, logged;
- each call's handling time is recorded by method and code;
- with tracing on, each traced call is a span (``tracing.ServerSpan``) that the caller's
  ``traceparent`` continues, with its status.

A stream's messages are decoded one by one: an undecodable one reaches the servicer as an
``Undecodable``, which it answers in the stream's own way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from opentelemetry.trace import Span

from ltrr_server import errors
from ltrr_server.api.status import Ctx, code_for, message_for
from ltrr_server.metrics import Metrics
from ltrr_server.tracing import ServerSpan, Tracing, ended_with, traced_call

log = logging.getLogger(__name__)


class Undecodable:
    """A request message that could not be decoded; ``error`` says so, naming the message type."""

    __slots__ = ("type_name", "error")

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        self.error = errors.InvalidArgument(
            "request", f"not a valid {type_name}: truncated, invalid UTF-8 in a string field, or nested too deeply")


def decoder(message_class: Any) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that answers an ``Undecodable`` instead of raising.

    >>> from ltrr.v1 import feedback_pb2
    >>> decode = decoder(feedback_pb2.RewardEvent)
    >>> decode(feedback_pb2.RewardEvent(event_id="e1").SerializeToString()).event_id
    'e1'
    >>> decode(b"\\x0a\\x02\\xff\\xfe").error.message  # event_id with invalid UTF-8
    'request: not a valid ltrr.v1.RewardEvent: truncated, invalid UTF-8 in a string field, or nested too deeply'
    """
    from_string = message_class.FromString
    type_name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return from_string(data)
        except Exception:  # DecodeError, RecursionError: the message itself is the problem
            return Undecodable(type_name)

    return decode


class _Outcome:
    """How a call ended: its status code and message, for its metrics and its span."""

    __slots__ = ("code", "detail")

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.detail = ""

    async def fail(self, exc: BaseException, context: Ctx, name: str) -> NoReturn:
        """Answers what ended the call, one rule for every kind of handler: a domain error with
        its status code, anything else unforeseen as INTERNAL (logged); a cancellation, an abort
        of the servicer's own (not counted by code) and whatever else stops the process go on."""
        if isinstance(exc, errors.LtrrError):
            self.code, self.detail = code_for(exc), message_for(exc)
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        elif isinstance(exc, grpc.aio.AbortError):
            self.code = grpc.StatusCode.UNKNOWN
            raise exc
        elif isinstance(exc, Exception):
            self.code, self.detail = grpc.StatusCode.INTERNAL, "internal error"
            log.error("%s failed", name, exc_info=exc)
        else:
            raise exc
        await context.abort(self.code, self.detail)


class ServiceRoutes:
    """One service's handlers; ``attach`` binds them to a servicer with a method per RPC."""

    def __init__(self, service: ServiceDescriptor, metrics: Metrics, tracing: Tracing | None = None) -> None:
        """``tracing``: None when it is off (no span, no metadata read)."""
        self.name = service.full_name
        self._metrics = metrics
        self._tracing = tracing
        self._rng = random.Random()
        self._methods: dict[str, Callable[..., Any]] = {}
        self._waiting_for = "the server is starting"
        self._handlers = {m.name: self._handler(m) for m in service.methods}

    @property
    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return self._handlers

    def waiting_for(self, reason: str) -> None:
        """What calls are told (UNAVAILABLE) until the service is attached."""
        self._waiting_for = reason

    def attach(self, *servicers: object) -> None:
        """Binds every method to the first of ``servicers`` that has it (a service's jobs may be
        split over several servicers: AdminService's policies and its keys)."""
        methods = {}
        for name in self._handlers:
            found = [getattr(s, name) for s in servicers if hasattr(s, name)]
            if not found:
                raise TypeError(f"{self.name}/{name}: no servicer has it")
            methods[name] = found[0]
        self._methods = methods

    def _bound(self, name: str) -> Callable[..., Any]:
        """The servicer's method for ``name``; UNAVAILABLE, saying why, until it is attached."""
        method = self._methods.get(name)
        if method is None:
            raise errors.Unavailable(f"{self.name} is not serving yet: {self._waiting_for}")
        return method

    def _handler(self, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        decode, encode = decoder(request), response.SerializeToString
        if method.client_streaming and method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(self._stream(method.name), decode, encode)
        if method.server_streaming and not method.client_streaming:
            return grpc.unary_stream_rpc_method_handler(self._unary_stream(method.name), decode, encode)
        if method.client_streaming:
            raise NotImplementedError(f"{method.full_name}: client-streaming methods are not routed")
        return grpc.unary_unary_rpc_method_handler(self._unary(method.name), decode, encode)

    def _unary(self, name: str) -> Callable[[Any, Ctx], Any]:
        metrics, tracing, rng = self._metrics, self._tracing, self._rng

        async def handle(request: Any, context: Ctx, span: Span | None) -> Any:
            start = time.perf_counter()
            outcome = _Outcome()
            try:
                method = self._bound(name)
                if request.__class__ is Undecodable:
                    raise request.error
                return await method(request, context)
            except BaseException as exc:
                await outcome.fail(exc, context, name)
            finally:
                metrics.observe_rpc(name, outcome.code.name, time.perf_counter() - start)
                if span is not None:
                    ended_with(span, outcome.code, outcome.detail)

        if tracing is None:
            async def call(request: Any, context: Ctx) -> Any:
                return await handle(request, context, None)
        else:
            tracer, ratio = tracing.tracer, tracing.sample_ratio

            async def call(request: Any, context: Ctx) -> Any:
                metadata = context.invocation_metadata()
                if not traced_call(metadata, ratio, rng):
                    return await handle(request, context, None)
                with ServerSpan(tracer, self.name, name, metadata or ()) as span:
                    return await handle(request, context, span)

        return call

    def _unary_stream(self, name: str) -> Callable[[Any, Ctx], AsyncIterator[Any]]:
        """A request answered by a stream (EvaluatePolicy: progress, then the result)."""
        metrics = self._metrics

        async def handle(request: Any, context: Ctx, span: Span | None = None) -> AsyncIterator[Any]:
            start = time.perf_counter()
            outcome = _Outcome()
            try:
                method = self._bound(name)
                if request.__class__ is Undecodable:
                    raise request.error
                async for answer in method(request, context):
                    yield answer
            except BaseException as exc:
                await outcome.fail(exc, context, name)
            finally:
                metrics.observe_rpc(name, outcome.code.name, time.perf_counter() - start)
                if span is not None:
                    ended_with(span, outcome.code, outcome.detail)

        return self._traced(name, handle)

    def _stream(self, name: str) -> Callable[[AsyncIterator[Any], Ctx], AsyncIterator[Any]]:
        async def handle(requests: AsyncIterator[Any], context: Ctx, span: Span | None = None
                         ) -> AsyncIterator[Any]:
            # Each message's handling is timed by the servicer, per message.
            outcome = _Outcome()
            try:
                method = self._bound(name)
                async for answer in method(requests, context):
                    yield answer
            except BaseException as exc:
                await outcome.fail(exc, context, name)
            finally:
                if span is not None:
                    ended_with(span, outcome.code, outcome.detail)

        return self._traced(name, handle, current=False)

    def _traced(self, name: str, handle: Callable[..., AsyncIterator[Any]], current: bool = True
                ) -> Callable[..., AsyncIterator[Any]]:
        """A streaming handler, in the call's span when it is traced (one span for the stream).
        Both are async generator functions: gRPC tells a streaming handler by that.

        ``current=False`` (a stream of requests: DecideStream, StreamRewards): the span is the
        stream's alone, and its messages' work is not traced one by one; a stream open for hours
        would otherwise be one trace of millions of spans."""
        tracing = self._tracing
        if tracing is None:
            return handle
        tracer, ratio, rng = tracing.tracer, tracing.sample_ratio, self._rng

        async def traced(request: Any, context: Ctx) -> AsyncIterator[Any]:
            metadata = context.invocation_metadata()
            if not traced_call(metadata, ratio, rng):
                async for answer in handle(request, context, None):
                    yield answer
                return
            call = ServerSpan(tracer, self.name, name, metadata or ())
            if not current:
                try:
                    async for answer in handle(request, context, call.span):
                        yield answer
                finally:
                    call.span.end()
                return
            with call as span:
                async for answer in handle(request, context, span):
                    yield answer

        return traced
