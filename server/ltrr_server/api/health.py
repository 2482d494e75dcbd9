"""``grpc.health.v1`` per service, from the causes that keep each from doing its job.

A service is SERVING when nothing holds it down. Causes are set from any thread: start-up phases
("policies are loading"), parts that died ("learner"), conditions polled every 0.25 s ("the event
log has not committed for 12 s"). The overall status ("") is SERVING when every service that is
enabled is; a service the configuration leaves out (Retrieve without strategies) reports
NOT_SERVING and is left out of the overall status. Every change is logged with its reason and
exported as ``ltrr_service_serving{service}``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from ltrr_server.metrics import Metrics

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Causes per service, published to the health servicer by ``run`` (on the event loop)."""

    def __init__(self, servicer: HealthServicer, metrics: Metrics, services: Iterable[str],
                 poll_interval: float = 0.25) -> None:
        self.servicer = servicer
        self._metrics = metrics
        self._causes: dict[str, dict[str, str]] = {s: {} for s in services}
        self._enabled = set(self._causes)
        self._checks: list[tuple[str, str, Callable[[], str]]] = []
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def down(self, service: str, cause: str, reason: str) -> None:
        """Holds ``service`` down for ``cause`` (any thread)."""
        self._set(service, cause, reason)
        self._poke()

    def up(self, service: str, cause: str) -> None:
        """Releases what ``cause`` held (any thread)."""
        self._set(service, cause, "")
        self._poke()

    def _set(self, service: str, cause: str, reason: str) -> None:
        with self._lock:
            if reason:
                self._causes[service][cause] = reason
            else:
                self._causes[service].pop(cause, None)

    def disable(self, service: str, reason: str) -> None:
        """A service the configuration leaves out: NOT_SERVING, and not part of the overall status."""
        self._enabled.discard(service)
        try:
            self._metrics.service_serving.remove(service)
        except KeyError:
            pass
        self.down(service, "disabled", reason)

    def check(self, service: str, cause: str, condition: Callable[[], str]) -> None:
        """Polls ``condition`` (a reason, or '' while all is well) every poll interval."""
        self._checks.append((service, cause, condition))

    def reason(self, service: str) -> str:
        """Why the service is not serving ('' if it is)."""
        with self._lock:
            return "; ".join(self._causes[service].values())

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def publish(self) -> None:
        """Sets every service's status from its causes, logging what changed (on the event loop)."""
        for service, cause, condition in self._checks:
            try:
                problem = condition()
            except Exception as exc:  # a check that fails says so, as its reason
                problem = f"health check failed: {exc}"
            self._set(service, cause, problem)
        with self._lock:
            statuses = {s: (SERVING if not causes else NOT_SERVING, "; ".join(causes.values()))
                        for s, causes in self._causes.items()}
        overall = SERVING if all(statuses[s][0] == SERVING for s in self._enabled) else NOT_SERVING
        for service, (status, why) in [*statuses.items(), ("", (overall, ""))]:
            before = self._published.get(service)
            if before == status:
                continue
            self._published[service] = status
            await self.servicer.set(service, status)
            if service in self._enabled:  # a service left out by the configuration is not a fault
                self._metrics.service_serving.labels(service).set(1 if status == SERVING else 0)
            if service:
                if status == SERVING:
                    log.info("%s: SERVING", service)
                elif before == SERVING:  # it was doing its job and no longer can
                    log.warning("%s: NOT_SERVING: %s", service, why)
                else:
                    log.info("%s: NOT_SERVING: %s", service, why)

    async def run(self) -> None:
        """Publishes on every change and every poll interval, until cancelled."""
        self._loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # before publishing: a change made meanwhile wakes the next round
            try:
                await self.publish()
            except Exception:
                log.exception("publishing health failed")
            try:
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
