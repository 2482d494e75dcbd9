"""Builds the gRPC server (decisions, retrieval, models, feedback, admin, health, reflection) and the metrics endpoint.

The port is checked and bound first, before any start-up work: health answers NOT_SERVING within
a second of the start, and a port in use ends the start at once. Then, with the server answering:

1. policies are restored (snapshot + replay) and the writer and learner start: Decide, the
   feedback and admin services go SERVING;
2. a first start's catalog and models are built (in a child process), live models and indexes
   loaded and checked: Retrieve and the model service go SERVING, or stay NOT_SERVING naming
   what is missing.

Afterwards health follows the parts: a part that died holds its services down until the
supervisor has it back; commits that stall hold the feedback service down.

``build_server`` is apart from ``main`` so that tests bind port 0 and run several servers,
each with its own metrics registry. Its heavy imports (VW, PECOS, indexes) happen after binding.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server

from ltrr.v1 import admin_pb2, decisions_pb2, feedback_pb2, models_pb2, retrieval_pb2, search_pb2
from ltrr_server import __version__
from ltrr_server.api.auth import AuthInterceptor, method_roles
from ltrr_server.api.health import Health
from ltrr_server.api.routes import ServiceRoutes
from ltrr_server.config import Settings, unknown_env
from ltrr_server.keys import KeyRing
from ltrr_server.metrics import Metrics
from ltrr_server.tls import TlsFiles, server_credentials
from ltrr_server.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ltrr_server.core.ltrr import Ltrr

log = logging.getLogger(__name__)

DECISIONS = decisions_pb2.DESCRIPTOR.services_by_name["DecisionService"]
FEEDBACK = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
RETRIEVAL = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"]
SEARCH = search_pb2.DESCRIPTOR.services_by_name["SearchService"]
MODELS = models_pb2.DESCRIPTOR.services_by_name["ModelService"]
SERVICES = tuple(s.full_name for s in (DECISIONS, FEEDBACK, ADMIN, RETRIEVAL, SEARCH, MODELS))
# What each background part's death stops. The learner: rewards are still acknowledged, but not
# learned (a replacement replays them); the writer: acknowledgements, which wait for commits.
_PART_SERVICES = {
    "writer": (FEEDBACK.full_name,), "writer_process": (FEEDBACK.full_name,), "learner": (FEEDBACK.full_name,),
    "joins": (FEEDBACK.full_name,), "retrieval_flush": (RETRIEVAL.full_name, SEARCH.full_name),
}
# ("first_start", the work a first start does, is retried by the start-up itself: see _start.)
# Long start-up work says it is still running at least this often.
PROGRESS_INTERVAL_SECONDS = 10.0
# A first start's work that failed is tried again after server.first_start_retry_seconds, then twice
# that, ... up to this many times it.
FIRST_START_MAX_BACKOFF_FACTOR = 20


@dataclass
class LtrrServer:
    """A running ltrr: the gRPC server, its parts (once restored), health, the metrics endpoint."""

    grpc_server: grpc.aio.Server
    settings: Settings
    metrics: Metrics
    health: Health
    routes: dict[str, ServiceRoutes]
    metrics_http: Any
    metrics_port: int
    keys: KeyRing
    tracing: Tracing = field(default_factory=Tracing)
    admin_server: grpc.aio.Server | None = None
    # The admin service's own port (server.admin_port), or -1 when it shares the gRPC port.
    admin_port: int = -1
    core: Ltrr | None = None
    _start_up: asyncio.Task[None] | None = None
    # Set once every service serves or says why it cannot (work that failed is retried after).
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    _health_task: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        """Waits until every service serves or says why it cannot (a first start's work that failed
        is then retried in the background); raises what stopped the start-up."""
        assert self._start_up is not None
        settled = asyncio.ensure_future(self._settled.wait())
        try:
            await asyncio.wait({self._start_up, settled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
        if self._start_up.done():
            self._start_up.result()

    async def stop(self, grace: float = 5.0) -> None:
        """Stops taking calls, lets running ones finish, then snapshots and flushes the log."""
        await self.health.servicer.enter_graceful_shutdown()
        if self._start_up is not None and not self._start_up.done():
            if self.core is not None:  # a first start's child is stopped, not waited for
                self.core.stop_opening()
            self._start_up.cancel()
            try:
                await self._start_up
            except BaseException:  # noqa: BLE001 - stopping: what start-up would have raised no longer matters
                pass
        if self.admin_server is not None:
            await asyncio.gather(self.grpc_server.stop(grace), self.admin_server.stop(grace))
        else:
            await self.grpc_server.stop(grace)
        if self._health_task is not None:
            self._health_task.cancel()
        if self.core is not None:
            await self.core.aclose()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        await asyncio.to_thread(self.tracing.shutdown, self.settings.shutdown_timeout_seconds)

    # ------------------------------------------------------------------ start-up
    async def _start(self) -> None:
        settings, health = self.settings, self.health
        for name in (DECISIONS.full_name, FEEDBACK.full_name, ADMIN.full_name):
            health.down(name, "start", "policies are being restored")
        for name in (RETRIEVAL.full_name, SEARCH.full_name):
            if settings.retrieval.enabled:
                health.down(name, "start", "waiting for the policies to be restored")
            else:
                health.disable(name, "no [retrieval] strategies are configured")
        health.down(MODELS.full_name, "start", "waiting for the policies to be restored")

        with _progress("restoring policies"):
            core = await asyncio.to_thread(_make_core, settings, self.metrics, self._on_component_change,
                                           self.tracing.tracer)
            self.core = core
            if self.tracing.enabled:
                core.supervisor.watch(self.tracing)
            await asyncio.to_thread(core.open_policies)
        from ltrr_server.api.access import AccessServicer
        from ltrr_server.api.admin import AdminServicer
        from ltrr_server.api.decisions import DecisionServicer
        from ltrr_server.api.feedback import FeedbackServicer

        limits = settings.limits
        self.routes[DECISIONS.full_name].attach(DecisionServicer(core.decisions, self.metrics, limits))
        self.routes[FEEDBACK.full_name].attach(FeedbackServicer(core.rewards, self.metrics, limits))
        self.routes[ADMIN.full_name].attach(
            AdminServicer(core.policies, core.rewards, core.jobs, core.imports, limits, core.audit),
            AccessServicer(core.keys, self.keys, core.audit))
        await core.start_joins()
        await core.start_pruning()
        if settings.auth == "keys":
            await core.start_key_refresh(self.keys)
        health.check(FEEDBACK.full_name, "commits", lambda: _commit_stall(core, settings.commit_stall_seconds))
        for name in (DECISIONS.full_name, FEEDBACK.full_name, ADMIN.full_name):
            health.up(name, "start")

        building = "the catalog, its indexes and the models are being loaded (on a first start, built)"
        for name in (RETRIEVAL.full_name, SEARCH.full_name, MODELS.full_name):
            self.routes[name].waiting_for(building)
        if settings.retrieval.enabled:
            health.down(RETRIEVAL.full_name, "start", building)
            health.down(SEARCH.full_name, "start", building)
        health.down(MODELS.full_name, "start", building)
        for attempt in itertools.count(1):
            try:
                with _progress("building and loading the catalog, indexes and models"):
                    await asyncio.to_thread(core.open_models)
                break
            except Exception as exc:
                # Decisions and rewards go on; what needs the catalog or the models says why it
                # cannot, and the work is tried again with backoff (a child killed for memory
                # may pass the next time; a broken catalog file is reported every time).
                first = settings.first_start_retry_seconds
                retry = min(first * FIRST_START_MAX_BACKOFF_FACTOR, first * 2 ** (attempt - 1))
                log.exception("start-up: the catalog, indexes or models could not be loaded (attempt %d); "
                              "trying again in %.0fs", attempt, retry)
                reason = f"the catalog, indexes or models could not be loaded: {exc}"
                for name in (RETRIEVAL.full_name, SEARCH.full_name, MODELS.full_name):
                    self.routes[name].waiting_for(reason)
                    health.down(name, "start", reason)
                self.metrics.component_up.labels("first_start").set(0)
                self._settled.set()
                await asyncio.sleep(retry)
                self.metrics.component_restarts.labels("first_start").inc()
        self.metrics.component_up.labels("first_start").set(1)
        from ltrr_server.api.models import ModelServicer
        from ltrr_server.api.retrieval import RetrievalServicer
        from ltrr_server.api.search import SearchServicer

        self.routes[MODELS.full_name].attach(ModelServicer(core.models, core.sessions, core.audit))
        health.up(MODELS.full_name, "start")
        health.check(MODELS.full_name, "models", lambda: "; ".join(core.live_models.failed.values()))
        # Without strategies it answers FAILED_PRECONDITION, saying so (its health: NOT_SERVING).
        self.routes[RETRIEVAL.full_name].attach(RetrievalServicer(core.decisions, limits))
        self.routes[SEARCH.full_name].attach(SearchServicer(core.decisions, limits))
        if core.retriever is not None:
            await core.start_retrieval_flush()
            health.up(RETRIEVAL.full_name, "start")
            health.up(SEARCH.full_name, "start")
        elif core.retrieval_problem is not None:
            health.down(RETRIEVAL.full_name, "start", core.retrieval_problem)
            health.down(SEARCH.full_name, "start", core.retrieval_problem)
        log.info("ltrr ready: every service restored and loaded")
        self._settled.set()

    def _on_component_change(self, component: str, up: bool, reason: str) -> None:
        for service in _PART_SERVICES.get(component, ()):
            if up:
                self.health.up(service, component)
            else:
                self.health.down(service, component, reason)


def _make_core(settings: Settings, metrics: Metrics, on_change: Callable[[str, bool, str], None],
               tracer: Tracer) -> Ltrr:
    from ltrr_server.core.ltrr import Ltrr

    return Ltrr(settings, metrics, on_component_change=on_change, tracer=tracer)


def _commit_stall(core: Ltrr, limit: float) -> str:
    stalled = core.writer.stalled_seconds()
    if stalled >= limit:
        return f"the event log has not committed for {stalled:.0f}s (is the database away?): acks wait"
    return ""


@contextmanager
def _progress(what: str, interval: float = PROGRESS_INTERVAL_SECONDS) -> Iterator[None]:
    """Logs that ``what`` is still running every ``interval`` seconds, and how long it took."""
    done = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not done.wait(interval):
            log.info("start-up: still %s (%.0fs)", what, time.monotonic() - t0)

    threading.Thread(target=tick, name="ltrr-start-progress", daemon=True).start()
    log.info("start-up: %s", what)
    try:
        yield
    finally:
        done.set()
    log.info("start-up: done %s in %.1fs", what, time.monotonic() - t0)


async def build_server(settings: Settings, registry: CollectorRegistry | None = None,
                       wait: bool = True) -> tuple[LtrrServer, int]:
    """Binds and starts serving, then restores and loads the parts. Returns the server and its
    bound gRPC port: with ``wait`` once every part is ready (raising what failed), else at once.

    The learner runs in a spawned child process, so a script that calls this must keep its
    top level behind ``if __name__ == "__main__":`` (the usual multiprocessing rule).
    """
    if registry is None:
        registry = CollectorRegistry()
        # process_resident_memory_bytes and friends, for LtrrMemoryRising, and python_info (an
        # injected registry may have its own).
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    metrics = Metrics(registry)
    host = settings.bind_host
    _check_port_free(host, settings.grpc_port)
    if settings.admin_port >= 0:
        _check_port_free(settings.admin_host, settings.admin_port)
    ring = KeyRing(settings.limits)
    services = [DECISIONS, FEEDBACK, ADMIN, RETRIEVAL, SEARCH, MODELS]
    interceptors = [AuthInterceptor(ring, method_roles(services), metrics)] if settings.auth == "keys" else []
    keepalive_ms = max(1, round(settings.keepalive_seconds * 1000))
    options = [
        ("grpc.max_receive_message_length", settings.limits.max_request_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
        # Settings.keepalive_seconds and client_ping_min_seconds say why.
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", min(20_000, keepalive_ms)),
        # Any ping of its own (flow control's too) unanswered as long closes the connection: the
        # keepalive ping waits behind one already in flight (grpc allows one), which would
        # otherwise hold the connection open for grpc's default of a minute.
        ("grpc.http2.ping_timeout_ms", min(20_000, keepalive_ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # the server's own pings, on a quiet stream too
        ("grpc.http2.min_ping_interval_without_data_ms", max(1, round(settings.client_ping_min_seconds * 1000))),
    ]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    # With admin_port, the admin service is served there only (health and reflection on both).
    admin_server = grpc.aio.server(options=options, interceptors=interceptors) if settings.admin_port >= 0 else None
    tracing = Tracing(settings.tracing, settings.tracing_endpoint, settings.tracing_sample_ratio, __version__)
    routes = {s.full_name: ServiceRoutes(s, metrics, tracing if tracing.enabled else None) for s in services}
    servicer = HealthServicer()
    for grpc_server, names in ((server, [n for n in SERVICES if admin_server is None or n != ADMIN.full_name]),
                               (admin_server, [ADMIN.full_name])):
        if grpc_server is None:
            continue
        for name in names:
            handlers = routes[name].handlers
            grpc_server.add_registered_method_handlers(name, handlers)
            grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
        if settings.reflection:
            reflection.enable_server_reflection(
                (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                grpc_server)
    health = Health(servicer, metrics, SERVICES)
    for name in SERVICES:
        health.down(name, "start", "the server is starting")
    await health.publish()  # NOT_SERVING, overall too, before the first call can come in
    tls = TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca) if settings.tls_cert else None
    port = _bind(server, tls, host, settings.grpc_port)
    admin_port = -1
    if admin_server is not None:
        try:
            admin_port = _bind(admin_server, tls, settings.admin_host, settings.admin_port)
        except OSError:
            await server.stop(0)
            raise
        await admin_server.start()
    await server.start()

    http, metrics_port = None, -1
    if settings.metrics_port >= 0:
        metrics_host = (settings.metrics_host or host).strip("[]")
        try:
            http, _ = start_http_server(
                settings.metrics_port, addr=metrics_host, registry=registry,
                certfile=settings.tls_cert if settings.metrics_tls else None,
                keyfile=settings.tls_key if settings.metrics_tls else None)
        except OSError:
            await server.stop(0)
            if admin_server is not None:
                await admin_server.stop(0)
            raise
        metrics_port = http.server_port
    log.info("ltrr listening: gRPC%s on %s:%d%s, metrics%s on %s:%d, database %s",
             " (mutual TLS)" if settings.tls_client_ca else " (TLS)" if settings.tls_cert else "",
             host, port, f", admin service on {settings.admin_host}:{admin_port}" if admin_server else "",
             " (HTTPS)" if settings.metrics_tls else "", settings.metrics_host or host, metrics_port,
             _redact(settings.db_url))
    _say_who_may_call(settings, metrics)
    ltrr = LtrrServer(server, settings, metrics, health, routes, http, metrics_port, ring, tracing, admin_server,
                      admin_port)
    ltrr._health_task = asyncio.create_task(health.run())
    ltrr._start_up = asyncio.create_task(ltrr._start())
    if wait:
        try:
            await ltrr.ready()
        except BaseException:
            await ltrr.stop(grace=0)
            raise
    return ltrr, port


def _bind(server: grpc.aio.Server, tls: TlsFiles | None, host: str, port: int) -> int:
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, server_credentials(tls)) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC port {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    return int(bound)


def _say_who_may_call(settings: Settings, metrics: Metrics) -> None:
    """Says at the start who can call this server; counts an insecure binding in a metric."""
    exposed = bool(settings.exposed())
    if settings.auth == "keys":
        log.info("authentication: every call needs an API key with the method's role (ltrr keys create)")
        if exposed and not settings.tls_cert:
            log.warning("API keys travel in clear: gRPC is bound beyond loopback without TLS (--tls-cert)")
    elif exposed:
        metrics.insecure.set(1)
        log.warning("INSECURE: bound beyond loopback with no authentication (--insecure): anyone who reaches "
                    "the port can create, change and reset policies; set server.auth = \"keys\"")
    else:
        log.info("no authentication (server.auth = \"none\"): bound to loopback only; other machines need "
                 "server.auth = \"keys\" (or --insecure)")


def _check_port_free(host: str, port: int) -> None:
    """Fails at once, naming the address, when the port is taken (gRPC would say only "cannot bind")."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot bind gRPC port {host}:{port}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(f"cannot bind gRPC port {host}:{port}: {exc.strerror} (is another server running?)") \
                from exc


def _redact(url: str) -> str:
    """A database URL fit for a log line.

    >>> _redact("postgresql://u:secret@h/db")
    'postgresql://u:***@h/db'
    """
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


async def serve(settings: Settings) -> None:
    """Runs until SIGINT or SIGTERM, then stops gracefully. A start-up that fails stops the server."""
    server, _ = await build_server(settings, wait=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start_up = asyncio.ensure_future(server.ready())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({start_up, stopped}, return_when=asyncio.FIRST_COMPLETED)
    failure = start_up.exception() if start_up.done() else None
    if start_up.done() and failure is None:
        # Pending decisions live for a whole join window by design: with CPython's default thresholds
        # the collector rescans them over and over (about 10% of Decide throughput). What start-up
        # built (modules, restored models, config) is frozen out of the scans for good.
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        await stopped
    if failure is not None:
        log.error("start-up failed: %s", failure)
    log.info("stopping: finishing calls, snapshotting, flushing the event log")
    await server.stop()
    if failure is not None:
        raise failure


def main(settings: Settings) -> None:
    settings.logs.apply()
    unknown = unknown_env(os.environ)
    if unknown:
        log.warning("environment: %s name no setting of ltrr (ignored)", ", ".join(unknown))
    asyncio.run(serve(settings))
