"""The server's parts over one database, started in two phases and stopped in order.

``open_policies`` makes decisions, rewards and the admin service work: the schema, the writer,
every policy restored (snapshot + replay), the learner. ``open_models`` then makes retrieval and
the model service work: a first start's catalog and models (built in a child process), the live
models, the catalog and its indexes, each checked against the database. The server is already
answering health checks while both run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ltrr_server import first_start
from ltrr_server.audit import AuditLog
from ltrr_server.config import Settings
from ltrr_server.core.decisions import Decisions
from ltrr_server.core.imports import Imports
from ltrr_server.core.models import Models
from ltrr_server.core.policies import PolicyBook, PolicyChange
from ltrr_server.core.rewards import Rewards
from ltrr_server.core.sessions import Sessions
from ltrr_server.errors import FailedPrecondition
from ltrr_server.heap import release_free_memory
from ltrr_server.jobs import Jobs
from ltrr_server.keys import REFRESH_SECONDS, Identity, KeyRing, KeyStore
from ltrr_server.learner.learner import Learner, LearnerPolicy
from ltrr_server.log import db, retention
from ltrr_server.log.journal import Journal
from ltrr_server.log.store import EventLogStore
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import PolicyModel
from ltrr_server.ranking.ranking import Ranking
from ltrr_server.retrieval.retriever import Retriever
from ltrr_server.supervisor import FunctionPart, OnChange, Supervisor
from ltrr_server.tenancy import tenant_of
from ltrr_server.tracing import NO_TRACER, Tracer
from ltrr_server.xmr.live import LiveModels
from ltrr_server.xmr.registry import ModelRegistry

log = logging.getLogger(__name__)

# How often the rankers that learned are saved to the data folder (a kill loses at most this much
# of their learning; serializing one takes the event loop ~ms).
RANKER_SAVE_SECONDS = 30.0


class Ltrr:
    """Builds every part; ``open_policies`` and ``open_models`` start them, ``close`` stops them."""

    def __init__(self, settings: Settings, metrics: Metrics, on_component_change: OnChange | None = None,
                 tracer: Tracer | None = None) -> None:
        tracer = tracer or NO_TRACER
        self.settings = settings
        self.metrics = metrics
        self.limits = settings.limits
        self.engine = db.create_engine(settings.db_url)
        self.store = EventLogStore(self.engine)
        self.writer = EventLogWriter(
            self.engine, metrics, settings.limits.max_write_queue_rows, settings.write_batch_rows,
            linger=settings.write_linger_seconds, idle_linger=settings.write_idle_linger_seconds,
            process=settings.writer_process, commit_timeout=settings.commit_timeout_seconds, logs=settings.logs,
        )
        self.learner = Learner(
            self.writer, metrics, self._on_publish, settings.publish_interval_seconds,
            settings.snapshot_interval_seconds, nice=settings.learner_nice, db_url=settings.db_url,
            policies=self._learner_policies, logs=settings.logs, tracer=tracer,
        )
        retrieval_policies = settings.retrieval.policies
        self.policies = PolicyBook(self.store, metrics, self.learner, self._next_seq, settings.metrics_window,
                                   settings.limits.max_policies, retrieval_policies)
        self.rewards = Rewards(self.policies, self.writer, self.store, self.learner, metrics, settings.limits,
                               retrieval_policies)
        self.decisions = Decisions(self.policies, self.rewards.joiner, self.writer, self.learner, self.store,
                                   metrics, settings.limits, retrieval_policies, tracer)
        self.keys = KeyStore(self.engine)
        self.audit = AuditLog(self.engine)
        self.jobs = Jobs(self.engine, settings.db_url, settings.limits.max_evaluations, settings.logs)
        self.imports = Imports(self.policies, self.rewards, self.writer, self.store, settings.limits,
                               retrieval_policies)
        self.registry = ModelRegistry(self.engine, settings.model_dir)
        self.live_models = LiveModels(self.registry)
        self.sessions = Sessions(settings.limits)
        self.models = Models(self.registry, self.live_models, self.sessions, settings.limits, settings.max_nfr)
        self.retriever: Retriever | None = None
        self.ranking: Ranking | None = None
        # Why retrieval cannot serve although it is configured (None: it can, or is not configured).
        self.retrieval_problem: str | None = None
        self.supervisor = Supervisor(metrics, on_change=on_component_change)
        self._loops: list[_LoopPart] = []
        # Set when the server stops: start-up work not begun is skipped, a first start's child stopped.
        self._stopping = threading.Event()
        # Held while open_policies or open_models runs: close() waits for them before closing what they open.
        self._opening = threading.Lock()

    def _next_seq(self) -> int:
        return self.rewards.joiner.next_seq

    def _on_publish(self, policy: str, lineage: int, model: PolicyModel, version: int, lag: float) -> None:
        self.policies.on_publish(policy, lineage, model, version, lag)

    def _learner_policies(self) -> list[LearnerPolicy]:
        return self.policies.learner_policies()

    # ------------------------------------------------------------------ start-up
    def open_policies(self) -> None:
        """Migrates the schema, starts the writer, restores every policy, recovers joins, starts the learner.

        A server stopping meanwhile (``close``) waits for it: what it starts is then stopped.
        Once the server is stopping, it does nothing."""
        with self._opening:
            if not self._stopping.is_set():
                self._open_policies()

    def _open_policies(self) -> None:
        self.writer.launch()  # the writer process imports its driver while the rest of the start-up runs
        db.migrate(self.engine)
        journal = db.journal_folder(self.settings.journal_dir, self.engine.url, db.database_id(self.engine))
        self.writer.start(Journal(journal) if journal is not None else None)
        if journal is not None:
            # Before anything reads the log: decisions a killed server answered are in it again.
            self.writer.replay(journal)
        log_end = self.store.max_joined_seq()
        self.rewards.joiner.next_seq = log_end + 1
        restored = self.policies.restore_all(self.settings.policies, self.settings.policy_fields, self._audit_start)
        for rt, since in restored:
            recovered = self.rewards.recover(rt, since)
            if recovered:
                log.info("policy %s: recovered %d decisions whose join was not written", rt.spec.name, recovered)
        self.learner.drain_before_start()
        self.learner.start(log_end)
        sup = self.supervisor
        sup.watch(FunctionPart("writer", self.writer.running, self.writer.restart))
        sup.watch(FunctionPart("writer_process", self.writer.committer_running, self.writer.restart_committer))
        sup.watch(FunctionPart("learner", self.learner.running, self.learner.restart))
        sup.start()

    def _audit_start(self, change: PolicyChange) -> None:
        """The file's changes, or a stored spec mended: made by the server as it started."""
        who = Identity("", tenant_of(change.info.spec.name), frozenset(), name="server start")
        self.audit.record(who, "policy.reset" if change.reset else "policy.update", change.info.spec.name,
                          change.before.to_dict(), change.info.spec.to_dict())

    def open_models(self) -> None:
        """A first start's work (in a child process), then the live models and the catalog with its
        indexes, each checked against the database: an index that does not hold the catalog is built
        again from it; a data folder of another database is refused (``retrieval_problem`` says why).

        Raises first_start.FirstStartStopped when ``stop_opening`` was called meanwhile."""
        with self._opening:
            if self._stopping.is_set():
                raise first_start.FirstStartStopped("the server is stopping")
            self._open_models()

    def stop_opening(self) -> None:
        """The server is stopping: a first start's work in progress is stopped (see first_start.run)."""
        self._stopping.set()

    def _open_models(self) -> None:
        conf = self.settings.retrieval
        if conf.enabled:
            try:
                db.claim_folder(Path(conf.data_dir), db.database_id(self.engine), "retrieval.data_dir")
            except FailedPrecondition as exc:
                self._retrieval_down(exc.message)
        settings = self.settings if self.retrieval_problem is None else \
            dataclasses.replace(self.settings, retrieval=dataclasses.replace(conf, strategies=(), policies=()))
        if first_start.needs_work(settings, self.engine, self.registry):
            first_start.run(settings, stop=self._stopping)
        self.live_models.load_all()
        if conf.enabled and self.retrieval_problem is None:
            retriever = Retriever(conf, self.engine, self.metrics, live_models=self.live_models)
            stale = retriever.stale_indexes()
            if stale:
                log.warning("indexes behind the catalog of %d items (%s): building them again from it",
                            len(retriever.catalog), ", ".join(f"{n} holds {k}" for n, k in stale.items()))
                retriever.close()
                first_start.run(self.settings, reindex=tuple(stale), stop=self._stopping)
                retriever = Retriever(conf, self.engine, self.metrics, live_models=self.live_models)
                stale = retriever.stale_indexes()
            if stale:
                retriever.close()
                self._retrieval_down(f"the indexes in {conf.data_dir} do not match the catalog of "
                                     f"{len(retriever.catalog)} items even after a rebuild: {stale}")
            else:
                self.retriever = retriever
                self.ranking = Ranking(conf.ranking, [spec.name for spec in conf.strategies], retriever.catalog,
                                       retriever.memory, self.engine, Path(conf.data_dir), self.metrics,
                                       live_models=self.live_models)
                self.decisions.retriever = self.rewards.retriever = retriever
                self.decisions.ranking = self.rewards.ranking = self.ranking
        # What training and ingest left behind goes back to the OS, not into the server's RSS.
        release_free_memory()

    def _retrieval_down(self, problem: str) -> None:
        log.error("retrieval cannot serve: %s", problem)
        self.retrieval_problem = problem
        self.decisions.retrieval_problem = problem

    # ------------------------------------------------------------------ background loops
    async def start_joins(self) -> None:
        """Joins decisions whose window closed, every 50 ms (supervised: restarted if it ever ends)."""
        await self._start_loop("joins", self._expire_loop)

    async def start_retrieval_flush(self) -> None:
        if self.retriever is not None:
            retriever = self.retriever
            await self._start_loop("retrieval_flush", lambda: self._flush_loop(retriever))

    async def start_pruning(self) -> None:
        """Prunes each policy's log by its retention_days every ``prune_interval_seconds``
        (supervised), in short transactions on a worker thread (log/retention.py)."""
        await self._start_loop("pruning", self._prune_loop)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.prune_interval_seconds)
            for name, rt in list(self.policies.policies.items()):
                if rt.spec.retention_days <= 0:
                    continue
                try:
                    pruned = await asyncio.to_thread(retention.prune_policy, self.engine, name,
                                                     retention.retention_cutoff(rt.spec.retention_days))
                except Exception:  # the next round tries again; the log only grows meanwhile
                    log.exception("pruning policy %r's event log failed", name)
                    continue
                self.metrics.pruned_events.labels(name).inc(pruned.events)
                if pruned.events or pruned.snapshots:
                    log.info("pruned policy %r's log: %d events and %d snapshots older than %g days (%d kept "
                             "for a restart's replay)", name, pruned.events, pruned.snapshots,
                             rt.spec.retention_days, pruned.kept_for_replay)

    async def start_key_refresh(self, ring: KeyRing) -> None:
        """Reads the keys that work into ``ring`` now, then every ``REFRESH_SECONDS`` (supervised):
        a key revoked through another server or on the database stops working here within that."""
        rows = await asyncio.to_thread(self.keys.active_rows)
        ring.replace(rows)
        if not rows:
            log.warning("server.auth = \"keys\" and no key works yet: every call but health's is refused until "
                        "one is made (ltrr keys create --db ... --role admin)")
        await self._start_loop("keys", lambda: self._keys_loop(ring))

    async def _keys_loop(self, ring: KeyRing) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                ring.replace(await asyncio.to_thread(self.keys.active_rows))
            except Exception:  # the keys read last stay in use; a revocation waits for the database
                log.exception("reading the API keys failed; retried in a second")
                await asyncio.sleep(1.0)

    async def _start_loop(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        part = _LoopPart(name, asyncio.get_running_loop(), body)
        part.start()
        self._loops.append(part)
        self.supervisor.watch(part)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            try:
                self.rewards.expire(time.time())
            except Exception:  # logged, and the next round tries again: joins must not stop
                log.exception("joining expired decisions failed")
                await asyncio.sleep(1.0)

    async def _flush_loop(self, retriever: Retriever) -> None:
        """Persists what strategies learned from engagements (memory statistics) and the users'
        histories once a second, and the rankers every ``RANKER_SAVE_SECONDS``."""
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(retriever.flush)
                if self.ranking is not None:
                    await asyncio.to_thread(self.ranking.users.flush)
                    if time.monotonic() - last_save >= RANKER_SAVE_SECONDS:
                        last_save = time.monotonic()
                        # Serialized here, on the event loop thread that learns; written on a worker.
                        await asyncio.to_thread(Ranking.write, self.ranking.saves())
            except Exception:
                log.exception("retrieval flush failed; retried in a second")

    # ------------------------------------------------------------------ shutdown
    async def aclose(self) -> None:
        self.supervisor.stop()
        for part in self._loops:
            part.stop()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Learns what is queued, snapshots every changed policy, commits everything."""
        self.stop_opening()
        if self._opening.acquire(timeout=self.settings.shutdown_timeout_seconds):
            self._opening.release()
        else:
            log.error("the start-up (restoring policies, or loading the catalog and models) was still running "
                      "after %.0fs: closing beside it", self.settings.shutdown_timeout_seconds)
        self.supervisor.stop()
        self.jobs.stop()
        self.learner.stop()
        if self.ranking is not None:
            try:  # the calls have stopped: no page is learned while the rankers are saved
                Ranking.write(self.ranking.saves())
                self.ranking.users.flush()
            except Exception:
                log.exception("saving the rankers and users' histories failed at the stop")
        if self.retriever is not None:
            self.retriever.close()
        self.writer.close(timeout=self.settings.shutdown_timeout_seconds)
        self.engine.dispose()


class _LoopPart:
    """A background loop of the event loop, as a supervised part."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, body: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._loop = loop
        self._body = body
        self._task: asyncio.Future[None] | None = None
        self._stopped = False

    def start(self) -> None:
        """On the event loop's thread."""
        self._task = asyncio.ensure_future(self._body(), loop=self._loop)

    def running(self) -> bool:
        return self._stopped or (self._task is not None and not self._task.done())

    def restart(self) -> None:
        """From the supervisor's thread."""
        self._loop.call_soon_threadsafe(self.start)

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
