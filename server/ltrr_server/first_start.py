"""A first start's heavy work, in a child process: the initial catalog and the demo autocomplete model.

Ingesting the demo's 100k items and training its autocomplete model allocate several hundred
MB of temporaries. In the server's own process, the long-lived objects made meanwhile pinned part
of that heap for good: a first start used 441-471 MB where a restart of the same server used 358.
A child process does the work, stores it (SQL, the index directory, the model registry) and
exits; the server then loads what it left exactly as on a restart (the demo: 289 MB, a restart
280).

The work is needed when the catalog is empty and one is configured (a file or the generated
demo), or when ``server.demo_autocomplete_sessions`` is set and no demo model is registered.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from ltrr_server.catalog.catalog import Catalog
from ltrr_server.config import Settings
from ltrr_server.heap import libc_function
from ltrr_server.log import db
from ltrr_server.metrics import Metrics
from ltrr_server.retrieval.retriever import Retriever
from ltrr_server.strategies.base import is_builtin
from ltrr_server.xmr.live import LiveModels
from ltrr_server.xmr.registry import ModelRegistry

log = logging.getLogger(__name__)

# The model name ``server.demo_autocomplete_sessions`` trains (the CLI's and RPC's default).
DEMO_AUTOCOMPLETE = "autocomplete"
# Below these, the catalog is ingested in the server's process (see ``run``).
SMALL_CATALOG_ITEMS = 20_000
SMALL_CATALOG_BYTES = 8 << 20
# How often the wait for the child looks whether the server is stopping.
STOP_POLL_SECONDS = 0.1


class FirstStartError(RuntimeError):
    """The child process doing a first start's work failed; its log says why."""


class FirstStartStopped(RuntimeError):
    """The server is stopping: the child doing a first start's work was stopped, its work left for the
    next start (an ingest commits its catalog in one transaction; indexes behind the catalog are
    built again from it)."""


def needs_work(settings: Settings, engine: sa.Engine, registry: ModelRegistry) -> bool:
    """Whether a first start's work is still to do (the schema must be migrated)."""
    if settings.demo_autocomplete_sessions and not registry.versions(DEMO_AUTOCOMPLETE):
        return True
    return _catalog_to_ingest(settings, engine)


def _catalog_to_ingest(settings: Settings, engine: sa.Engine) -> bool:
    """A catalog is configured (a file or the generated demo) and none is stored yet."""
    conf = settings.retrieval
    return conf.enabled and bool(conf.catalog_path or conf.demo_items) and Catalog.stored_count(engine) == 0


def run(settings: Settings, reindex: tuple[str, ...] = (), stop: threading.Event | None = None) -> None:
    """Does the work in a child process and waits for it. Raises FirstStartError if it failed.

    ``reindex``: strategies whose index does not match the stored catalog, to build again from it
    (instead of the first start's work).

    ``stop``: set when the server is stopping. The child is then stopped within ``STOP_POLL_SECONDS``
    and FirstStartStopped raised: a SIGTERM during a first start is honoured at once, not when the
    work is done (the demo's: about 70 s, more than an orchestrator's usual grace of 30 s).

    Small work (no demo autocomplete model, a catalog under ``SMALL_CATALOG_ITEMS`` items or
    ``SMALL_CATALOG_BYTES``) is done here: a child's imports (2-3 s) would cost more than the heap
    it saves. So is the work when a strategy kind is registered in this process only (a plug-in),
    which a fresh process would not know.
    """
    t0 = time.perf_counter()
    plugins = sorted({s.kind for s in settings.retrieval.strategies if not is_builtin(s.kind)})
    if settings.retrieval.enabled and plugins:
        log.info("first start: in this process (strategy kinds registered here only: %s)", ", ".join(plugins))
        do_work(settings, reindex)
        return
    if _small(settings, reindex):
        do_work(settings, reindex)
        return
    child = multiprocessing.get_context("spawn").Process(
        target=_child, args=(settings, reindex),
        name="ltrr-first-start")
    child.start()
    try:
        while child.is_alive() and not (stop is not None and stop.is_set()):
            child.join(STOP_POLL_SECONDS)
    finally:
        stopped = child.is_alive()
        if stopped:  # the server is being stopped (SIGTERM, Ctrl-C): so is the work
            child.terminate()
            child.join()
    if stopped:
        log.info("first start: stopped with the server; the next start does the work")
        raise FirstStartStopped("the server is stopping")
    if child.exitcode != 0:
        raise FirstStartError(f"the first start's work failed in its process (exit code {child.exitcode}): "
                              "see the log above; the next start does it again")
    log.info("first start: catalog and models ready in %.1fs", time.perf_counter() - t0)


def _small(settings: Settings, reindex: tuple[str, ...] = ()) -> bool:
    if reindex:
        engine = db.create_engine(settings.db_url)
        try:
            return Catalog.stored_count(engine) < SMALL_CATALOG_ITEMS
        finally:
            engine.dispose()
    if settings.demo_autocomplete_sessions:
        return False
    conf = settings.retrieval
    if conf.catalog_path:
        try:
            return os.path.getsize(conf.catalog_path) < SMALL_CATALOG_BYTES
        except OSError:  # reading it fails in this process too, with the reason
            return True
    return conf.demo_items < SMALL_CATALOG_ITEMS


def _child(settings: Settings, reindex: tuple[str, ...]) -> None:
    _die_with_parent()
    settings.logs.apply()
    do_work(settings, reindex)


def do_work(settings: Settings, reindex: tuple[str, ...] = ()) -> None:
    """The work itself, in this process: train the demo autocomplete model, ingest the catalog
    (or, with ``reindex``, index the stored catalog again in those strategies)."""
    engine = db.create_engine(settings.db_url)
    try:
        if reindex:
            retriever = Retriever(settings.retrieval, engine, Metrics(CollectorRegistry()))
            try:
                t0 = time.perf_counter()
                retriever.reindex(reindex, _log_progress)
                log.info("indexes %s rebuilt from the catalog (%d items) in %.1fs", ", ".join(reindex),
                         len(retriever.catalog), time.perf_counter() - t0)
            finally:
                retriever.close()
            return
        registry = ModelRegistry(engine, settings.model_dir)
        _train_demo_autocomplete(settings, registry)
        # A retriever loads every index: made only when a catalog is to be ingested, not for the
        # autocomplete model alone.
        if _catalog_to_ingest(settings, engine):
            live = LiveModels(registry)
            live.load_all()
            retriever = Retriever(settings.retrieval, engine, Metrics(CollectorRegistry()), live_models=live)
            try:
                _load_initial_catalog(settings, retriever)
            finally:
                retriever.close()
    finally:
        engine.dispose()


def _train_demo_autocomplete(settings: Settings, registry: ModelRegistry) -> None:
    """With ``server.demo_autocomplete_sessions`` set and no "autocomplete" model registered:
    one trained on the demo sessions, live, so that ``ltrr complete`` answers on a first start."""
    n = settings.demo_autocomplete_sessions
    if not n or registry.versions(DEMO_AUTOCOMPLETE):
        return
    from ltrr_server.autocomplete.model import AutocompleteModel
    from ltrr_server.autocomplete.sessions import demo_sessions
    from ltrr_server.demo.music import MusicWorld

    t0 = time.perf_counter()
    world = MusicWorld(n_items=settings.retrieval.demo_items or 100_000, seed=settings.retrieval.demo_seed)
    model = AutocompleteModel.train(
        demo_sessions(world, n, seed=0),
        progress=lambda stage, done, total: log.info("autocomplete demo model %d/%d: %s", done, total, stage))
    version = registry.register(DEMO_AUTOCOMPLETE, "autocomplete", model, model.meta | {"demo": True})
    registry.set_live(DEMO_AUTOCOMPLETE, version, {"demo": True})
    log.info("autocomplete: demo model trained on %d sessions (%d labels) in %.1fs", n, model.meta["labels"],
             time.perf_counter() - t0)


def _load_initial_catalog(settings: Settings, retriever: Retriever) -> None:
    """The empty catalog gets the configured catalog file, or the generated demo catalog."""
    from ltrr_server.catalog.ingest import demo_items, read_catalog

    conf = settings.retrieval
    t0 = time.perf_counter()
    if conf.catalog_path:
        items, errors = read_catalog(conf.catalog_path)
        for e in errors[:20]:
            log.warning("catalog %s: %s", conf.catalog_path, e)
    else:
        items = demo_items(conf.demo_items, conf.demo_seed)
    changes = retriever.ingest(items, _log_progress)
    log.info("catalog: %d items ingested in %.1fs", len(changes.added), time.perf_counter() - t0)


def _log_progress(stage: str, done: int, total: int) -> None:
    if done == total or done % 20_000 == 0:
        log.info("%s: %d/%d", stage, done, total)


def _die_with_parent() -> None:
    """A server killed during its first start takes this process with it (Linux; elsewhere a no-op)."""
    prctl = libc_function("prctl")
    if prctl is not None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
