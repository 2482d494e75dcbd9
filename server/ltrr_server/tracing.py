"""OpenTelemetry traces: every call, through the plan, the strategies, the ranking, the commit and
the learner.

Off by default (``server.tracing = "none"``): the parts hold OpenTelemetry's no-op tracer and
the calls make no spans at all. With ``"otlp"``, spans go in batches to an OTLP/gRPC collector
(Jaeger, Tempo, the OpenTelemetry Collector) at ``server.tracing_endpoint``; a trace is kept with
``server.tracing_sample_ratio`` unless the caller's ``traceparent`` (W3C trace context, gRPC
metadata) says whether it is sampled. ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name
the service as everywhere else.

What one ``Search`` (or ``Retrieve``, ``Decide``) leaves in its trace::

    ltrr.v1.SearchService/Search    the call (a server span; the caller's span is its parent)
      decide                        the policy's choice: policy, lineage, event id, action, probability
      strategy bm25                 one per strategy the plan ran: budget, hits, error
      rank                          the page: ranker, order, size, whether it explored
      commit                        from the decision's row being queued to its commit
      learn                         from the join (its reward came, or its window closed) to the
                                    first model published after learning it; linked to the span
                                    of the reward call that brought its first reward, when traced

``commit`` ends just after the call is answered, ``learn`` only once the decision is joined: a
trace viewer shows them when they arrive. Log lines written during a call carry its ``trace_id``
and ``span_id`` (``logs.JsonFormatter``).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, Tracer

__all__ = ["NO_TRACER", "Pending", "ServerSpan", "Tracer", "Tracing", "ended_with", "record", "recording",
           "traced_call", "until_done"]


log = logging.getLogger(__name__)
# What every part holds while tracing is off: its spans record nothing.
NO_TRACER: Tracer = trace.NoOpTracer()
# Spans waiting for the learner, per policy, at most: past it the oldest end unfinished (a
# learner that stopped publishing must not grow the server).
MAX_WAITING_SPANS = 10_000


class Tracing:
    """The server's tracer provider (none when off); ``shutdown`` sends what is buffered.

    With tracing on, it is also a supervised part (``supervisor.Part``, named ``tracing``): the
    OpenTelemetry SDK exports from a thread of its own, and if that thread died, spans would stop
    with nothing saying so. ``running()`` looks at that thread; ``restart()`` puts a new batch
    processor, with a new exporter, in the place of the dead one (what the dead one held is lost).
    Calls never wait on it, so health does not depend on it: ``ltrr_component_up{component="tracing"}``
    and the part-down alert say it.

    >>> Tracing().enabled, Tracing().tracer.start_span("x").is_recording()
    (False, False)
    """

    name = "tracing"

    def __init__(self, mode: str = "none", endpoint: str = "", sample_ratio: float = 1.0, version: str = "",
                 exporter: Callable[[], Any] | None = None) -> None:
        """``exporter`` makes the span exporter (OTLP/gRPC to ``endpoint`` unless given)."""
        self.enabled = mode == "otlp"
        self.sample_ratio = sample_ratio
        self._provider: Any = None
        self._batches: Any = None
        self.tracer: Tracer = NO_TRACER
        if not self.enabled:
            return
        # Imported only when on: the SDK and the exporter are ~40 ms of a start nobody needs.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

        def otlp() -> Any:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=endpoint or None,
                                    insecure=True if endpoint.startswith("http://") else None)

        resource = Resource.create({"service.name": "ltrr", "service.version": version})
        # The ratio is applied before a span is made (``traced_call``); what gets here is traced.
        provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
        self._batches = _batches(exporter or otlp)
        provider.add_span_processor(self._batches)
        self._provider = provider
        self.tracer = provider.get_tracer("ltrr_server", version)
        log.info("tracing: OTLP to %s, %.0f%% of the calls no caller decided", endpoint or "the OTEL_ default",
                 100 * sample_ratio)

    def running(self) -> bool:
        """Whether spans are being exported (true when off, or stopped on purpose)."""
        return self._provider is None or self._batches.alive()

    def restart(self) -> None:
        if self._provider is not None:
            self._batches.renew()
            log.warning("tracing: the span export thread had stopped; a new one exports from now on")

    def shutdown(self, timeout: float) -> None:
        """Exports the spans still buffered (a stop's last calls) for at most ``timeout`` seconds:
        a collector that is away must not hold the stop (its exporter retries for 10 s)."""
        provider, self._provider = self._provider, None
        if provider is None:
            return
        flush = threading.Thread(target=provider.shutdown, name="ltrr-trace-flush", daemon=True)
        flush.start()
        flush.join(timeout)
        if flush.is_alive():
            log.warning("tracing: the collector took no spans in %.0fs; the last ones are dropped", timeout)


def _batches(make_exporter: Callable[[], Any]) -> Any:
    """The span processor the provider holds: the SDK's batch processor, behind one that can put a
    new one in its place (a provider cannot drop a processor it was given)."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class Batches(SpanProcessor):
        def __init__(self) -> None:
            self.inner: Any = BatchSpanProcessor(make_exporter())

        def _worker(self) -> threading.Thread | None:
            # The SDK's own attribute (1.3x-1.4x); an SDK without it cannot be watched: taken as up.
            worker = getattr(getattr(self.inner, "_batch_processor", None), "_worker_thread", None)
            return worker if isinstance(worker, threading.Thread) else None

        def alive(self) -> bool:
            worker = self._worker()
            return worker is None or worker.is_alive()

        def renew(self) -> None:
            # The old processor is dropped, not shut down: its shutdown would wait on its dead thread.
            self.inner = BatchSpanProcessor(make_exporter())

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.inner.on_start(span, parent_context=parent_context)

        def on_end(self, span: Any) -> None:
            self.inner.on_end(span)

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(self.inner.force_flush(timeout_millis))

    batches = Batches()
    if batches._worker() is None:
        log.warning("tracing: this OpenTelemetry SDK does not show its export thread; it is not watched")
    return batches


class ServerSpan:
    """The span of one call, current while it is handled; its parent is the caller's
    ``traceparent``. The handler records its status (``ended_with``). A class, not a
    ``contextmanager``: the generator's machinery was a third of a span's cost."""

    __slots__ = ("span", "_token")

    def __init__(self, tracer: Tracer, service: str, method: str, metadata: Iterable[tuple[str, Any]]) -> None:
        parent = extract({k: v for k, v in metadata if isinstance(v, str)})
        self.span = tracer.start_span(
            f"{service}/{method}", context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)
        self.span.end()


def traced_call(metadata: Iterable[tuple[str, Any]] | None, ratio: float, rng: random.Random) -> bool:
    """Whether a call is traced: as its caller's ``traceparent`` says (the sampled flag), else
    with probability ``ratio``. Decided before any span exists: a call that is not traced costs
    one look at its metadata (a span that records nothing took 37 us here, one that does 86).

    >>> parent = "00-" + "a" * 32 + "-" + "b" * 16
    >>> rng = random.Random(1)
    >>> sampled, unsampled = [("traceparent", parent + "-01")], [("traceparent", parent + "-00")]
    >>> traced_call(sampled, 0.0, rng), traced_call(unsampled, 1.0, rng)
    (True, False)
    >>> traced_call([], 0.0, rng), traced_call([], 1.0, rng), traced_call([("traceparent", "junk")], 1.0, rng)
    (False, True, True)
    """
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str) and len(value) >= 55:
            try:
                return bool(int(value[-2:], 16) & 1)
            except ValueError:
                break  # not a valid traceparent: as if there were none
    return ratio >= 1.0 or rng.random() < ratio


# The gRPC codes that make a server span an error (OpenTelemetry's semantic conventions for RPC):
# the server's own failures. The rest (INVALID_ARGUMENT, NOT_FOUND, CANCELLED, ...) are the
# caller's, recorded as the status code and message only.
_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})


def ended_with(span: Span, code: Any, message: str = "") -> None:
    """Records a call's gRPC status on its span: ``rpc.grpc.status_code``, the message of a
    status other than OK, and an error status for the server's own failures."""
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code.name == "OK":
        return
    if message:
        span.set_attribute("ltrr.status_message", message)
    if code.name in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}" if message else code.name))


def recording() -> SpanContext | None:
    """The current span's context when it is sampled (the parts' one test before tracing anything)."""
    span = trace.get_current_span()
    return span.get_span_context() if span.is_recording() else None


def record(tracer: Tracer, name: str, parent: SpanContext, start_ns: int, end_ns: int,
           attributes: Mapping[str, Any], error: str = "") -> None:
    """A span that already happened (a strategy's run on a worker thread, timed there)."""
    span = tracer.start_span(name, context=trace.set_span_in_context(NonRecordingSpan(parent)),
                             start_time=start_ns, attributes=attributes)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)


def until_done(tracer: Tracer, name: str, parent: SpanContext, fut: Future[Any],
               attributes: Mapping[str, Any] | None = None) -> None:
    """A span from now until ``fut`` resolves (a commit); an error if it fails."""
    span = tracer.start_span(name, context=trace.set_span_in_context(NonRecordingSpan(parent)),
                             attributes=attributes)

    def done(f: Future[Any]) -> None:
        error = f.exception() if not f.cancelled() else None
        if error is not None or f.cancelled():
            span.set_status(Status(StatusCode.ERROR, str(error) if error else "cancelled"))
        span.end()

    fut.add_done_callback(done)


class Pending:
    """Spans waiting for a count to reach theirs (a learn span: ended by the first publish whose
    learned count covers its event). Thread-safe: the feeding thread adds, the receiving one ends."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._lock = threading.Lock()
        self._waiting: dict[str, collections.deque[tuple[int, Span]]] = {}

    def start(self, key: str, count: int, name: str, parent: SpanContext, attributes: Mapping[str, Any],
              link: SpanContext | None = None) -> None:
        """``link``: another trace's span it belongs to as well (the call that brought the reward)."""
        span = self._tracer.start_span(name, context=trace.set_span_in_context(NonRecordingSpan(parent)),
                                       attributes=attributes, links=None if link is None else [trace.Link(link)])
        with self._lock:
            waiting = self._waiting.setdefault(key, collections.deque())
            waiting.append((count, span))
            if len(waiting) > MAX_WAITING_SPANS:
                _, oldest = waiting.popleft()
                oldest.set_status(Status(StatusCode.ERROR, "not learned while the newest spans waited"))
                oldest.end()

    def reached(self, key: str, count: int) -> None:
        with self._lock:
            waiting = self._waiting.get(key)
            while waiting and waiting[0][0] <= count:
                waiting.popleft()[1].end()

    def abandon(self, reason: str) -> None:
        """Ends every waiting span as an error (the learner process was replaced)."""
        with self._lock:
            for waiting in self._waiting.values():
                for _, span in waiting:
                    span.set_status(Status(StatusCode.ERROR, reason))
                    span.end()
            self._waiting.clear()
