"""Builds the gRPC server (decisions, retrieval, models, feedback, admin, health, reflection) and the metrics endpoint.

``build_server`` is apart from ``main`` so that tests bind port 0 and run several servers,
each with its own metrics registry.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from ltrr.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    decisions_pb2,
    decisions_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from ltrr_server.api.admin import AdminServicer
from ltrr_server.api.decisions import DecisionServicer
from ltrr_server.api.feedback import FeedbackServicer
from ltrr_server.api.models import ModelServicer
from ltrr_server.api.retrieval import RetrievalServicer
from ltrr_server.config import Settings
from ltrr_server.core import Ltrr
from ltrr_server.first_start import LOG_FORMAT
from ltrr_server.metrics import Metrics

log = logging.getLogger(__name__)

SERVICES = (
    decisions_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
    feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
)


@dataclass
class LtrrServer:
    """A running ltrr: the gRPC server, its core, and the metrics endpoint."""

    grpc_server: grpc.aio.Server
    core: Ltrr
    health: HealthServicer
    metrics_http: Any
    metrics_port: int

    async def stop(self, grace: float = 5.0) -> None:
        """Stops taking calls, lets running ones finish, then snapshots and flushes the log."""
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        await self.core.aclose()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()


async def build_server(settings: Settings, registry: CollectorRegistry | None = None) -> tuple[LtrrServer, int]:
    """Restores the core and starts serving. Returns the server and its bound gRPC port.

    The learner runs in a spawned child process, so a script that calls this must keep its
    top level behind ``if __name__ == "__main__":`` (the usual multiprocessing rule).
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    core = Ltrr(settings, metrics)
    await asyncio.to_thread(core.open)
    await core.start_background()

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.limits.max_request_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ])
    decisions_pb2_grpc.add_DecisionServiceServicer_to_server(DecisionServicer(core, metrics), server)
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FeedbackServicer(core, metrics), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(core, metrics), server)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(core, metrics), server)
    models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core, metrics), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    if port == 0:
        raise OSError(f"cannot bind gRPC port {settings.grpc_host}:{settings.grpc_port}")
    await server.start()
    for name in ("", *SERVICES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)

    http, metrics_port = None, -1
    if settings.metrics_port >= 0:
        http, _ = start_http_server(settings.metrics_port, registry=registry)
        metrics_port = http.server_port
    log.info("ltrr serving gRPC on %s:%d, metrics on :%d, database %s", settings.grpc_host, port, metrics_port,
             _redact(settings.db_url))
    return LtrrServer(server, core, health, http, metrics_port), port


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
    """Runs until SIGINT or SIGTERM, then stops gracefully."""
    server, _ = await build_server(settings)
    # Pending decisions live for a whole join window by design: with CPython's default thresholds
    # the collector rescans them over and over (about 10% of Decide throughput). What start-up
    # built (modules, restored models, config) is frozen out of the scans for good.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing calls, snapshotting, flushing the event log")
    await server.stop()


def main(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    asyncio.run(serve(settings))
