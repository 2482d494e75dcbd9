"""One supervisor for every background part: a part that dies is restarted with backoff.

A part is anything with a ``name``, ``running()`` and ``restart()``: the writer thread, the writer process,
the learner process. The supervisor looks at each every ``interval`` seconds; a dead part is
restarted at once, then after 0.5 s, 1 s, 2 s ... up to ``max_backoff`` while it keeps failing
(the backoff starts over once a part has stayed up for ``stable_after`` seconds). Every restart
is counted in ``ltrr_component_restarts_total{component}``, and ``ltrr_component_up{component}``
says which parts run now. ``on_change(name, up, reason)`` tells whoever reports health.

>>> from prometheus_client import CollectorRegistry
>>> from ltrr_server.metrics import Metrics
>>> class Part:
...     name, up = "demo", False
...     def running(self): return self.up
...     def restart(self): self.up = True
>>> metrics = Metrics(CollectorRegistry())
>>> sup = Supervisor(metrics)
>>> part = Part()
>>> sup.watch(part)
>>> sup.check_once()
>>> part.up, metrics.registry.get_sample_value("ltrr_component_restarts_total", {"component": "demo"})
(True, 1.0)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ltrr_server.metrics import Metrics

log = logging.getLogger(__name__)


class Part(Protocol):
    """A supervised background part."""

    @property
    def name(self) -> str: ...

    def running(self) -> bool:
        """Whether the part runs (or is not meant to: stopped on purpose)."""

    def restart(self) -> None:
        """Brings the part back, its state resynchronized; raises if it could not."""


@dataclass(frozen=True)
class FunctionPart:
    """A part given as its two functions."""

    name: str
    running: Callable[[], bool]
    restart: Callable[[], None]


# on_change(component, up, reason): called from the supervisor's thread when a part goes down or up.
OnChange = Callable[[str, bool, str], None]


@dataclass
class _Watched:
    part: Part
    up: bool = True
    failures: int = 0
    next_try: float = 0.0
    up_since: float = 0.0
    restarting: bool = False


class Supervisor:
    """Watches parts from one thread; see the module's docstring. Each restart runs in a thread of
    its own, so a part that takes long to come back (a learner replaying the log) holds no other."""

    def __init__(
        self, metrics: Metrics, interval: float = 0.1, max_backoff: float = 30.0, stable_after: float = 60.0,
        on_change: OnChange | None = None,
    ) -> None:
        self._metrics = metrics
        self._interval = interval
        self._max_backoff = max_backoff
        self._stable_after = stable_after
        self._on_change = on_change
        self._watched: list[_Watched] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, part: Part) -> None:
        """Watches a part that runs now."""
        self._watched.append(_Watched(part, up_since=time.monotonic()))
        self._metrics.component_up.labels(part.name).set(1)
        self._metrics.component_restarts.labels(part.name)  # the series exists from the start, at 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ltrr-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops watching (before the parts are stopped on purpose)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_once(in_thread=True)
            except Exception:  # the supervisor itself must not die of one part's fault
                log.exception("supervisor check failed")

    def check_once(self, in_thread: bool = False) -> None:
        """Looks at every part once, restarting those that are due."""
        for w in list(self._watched):
            if self._stop.is_set():
                return
            if w.restarting:
                continue
            now = time.monotonic()
            if w.part.running():
                if not w.up:
                    w.up_since = now
                    self._mark(w, True, "")
                if w.failures and now - w.up_since >= self._stable_after:
                    w.failures = 0
                continue
            if w.up:
                self._mark(w, False, f"{w.part.name} stopped; restarting it")
                w.next_try = now
            if now < w.next_try:
                continue
            w.failures += 1
            # Restarts in a row: the first at once, then 0.5 s, 1 s, 2 s ... apart.
            delay = 0.0 if w.failures == 1 else min(self._max_backoff, 0.5 * 2 ** (w.failures - 2))
            w.next_try = now + delay
            self._metrics.component_restarts.labels(w.part.name).inc()
            log.warning("%s is down: restarting it (restart %d in a row)", w.part.name, w.failures)
            if in_thread:
                w.restarting = True
                threading.Thread(target=self._restart, args=(w,), name=f"ltrr-restart-{w.part.name}",
                                 daemon=True).start()
            else:
                self._restart(w)

    def _restart(self, w: _Watched) -> None:
        name = w.part.name
        try:
            w.part.restart()
        except Exception as exc:
            log.error("%s could not be restarted (%s); next try in %.1fs", name, exc,
                      max(0.0, w.next_try - time.monotonic()))
            if self._on_change is not None:
                self._on_change(name, False, f"{name} is down and could not be restarted: {exc}")
        else:
            log.info("%s restarted", name)
        finally:
            w.restarting = False

    def _mark(self, w: _Watched, up: bool, reason: str) -> None:
        w.up = up
        self._metrics.component_up.labels(w.part.name).set(1 if up else 0)
        if self._on_change is not None:
            self._on_change(w.part.name, up, reason)
