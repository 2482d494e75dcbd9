"""The retriever: runs a plan's strategies concurrently, fuses their lists, credits them later.

It owns the catalog and the strategies. The core asks the policy for a plan (an action of a
cb policy), hands the plan here, and attaches the returned ``RetrievalRecord`` to the pending
decision; when rewards name engaged items, ``reward_value`` turns them into the plan's reward,
and ``on_joined`` credits the strategies that found them and feeds the memory strategy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from array import array
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ltrr_server.catalog.catalog import Catalog, IngestChanges, Progress, no_progress, normalize
from ltrr_server.catalog.items import Item
from ltrr_server.config import RetrievalSettings
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import Namespaces, action_line, actions_to_json
from ltrr_server.metrics import Metrics
from ltrr_server.retrieval.plans import Plan, make_plans, plan_features, plan_from_budgets
from ltrr_server.retrieval.query import query_features
from ltrr_server.strategies import base
from ltrr_server.strategies.base import Hit, Indexes, LearnsFromEngagement, Query, Strategy
from ltrr_server.strategies.memory import MemoryStrategy
from ltrr_server.strategies.vector import VectorStrategy

log = logging.getLogger(__name__)

# Weight of the newest observation in a strategy's recent hit rate and latency.
_EWMA = 0.01


@dataclass(frozen=True)
class ActionSet:
    """The plans as a policy's actions, with their current features; logged once under ``key``."""

    ids: list[str]
    lines: list[str]
    json: str
    key: str


@dataclass(slots=True)
class RetrievalRecord:
    """What a pending retrieval decision needs to be rewarded and credited (kept compact)."""

    query: str
    positions: array  # type: ignore[type-arg]
    # Per candidate, a bit per running strategy (by index into ``strategies``) that found it.
    masks: bytes
    strategies: tuple[str, ...]
    drawn: int
    learn: bool
    engaged: list[int] | None = None
    # Search: the page shown (a ranking.PageRecord), and each engaged item's grade by position.
    page: Any = None
    grades: dict[int, float] | None = None


@dataclass
class StrategyRun:
    strategy: str
    budget: int
    hits: list[Hit]
    seconds: float
    error: str = ""
    # When it started (wall clock, ns): a traced call records the run as a span.
    started_ns: int = 0


# How a strategy found a candidate: (strategy, its score, its rank from 1).
Provenance = tuple[str, float, int]


@dataclass
class RetrievalResult:
    """The fused union: item ids in fused order, with each one's fused score and provenance.

    Kept as parallel lists rather than an object per candidate: a response holds hundreds.
    """

    plan: Plan
    runs: list[StrategyRun]
    item_ids: list[str]
    fused_scores: list[float]
    provenance: list[list[Provenance]]
    record: RetrievalRecord

    def __len__(self) -> int:
        return len(self.item_ids)


class _Recent:
    """A strategy's recent hit rate and latency (exponentially weighted)."""

    __slots__ = ("hit_rate", "latency_ms")

    def __init__(self) -> None:
        self.hit_rate = 0.0
        self.latency_ms = 0.0


class Retriever:
    def __init__(self, settings: RetrievalSettings, engine: sa.Engine, metrics: Metrics,
                 catalog: Catalog | None = None, live_models: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self.catalog = catalog if catalog is not None else Catalog.load(engine)
        self.data_dir = Path(settings.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = base.StrategyEnv(self.catalog, self.data_dir, engine, live_models)
        self.strategies: dict[str, Strategy] = {}
        for spec in settings.strategies:
            params = base.Params(f"retrieval.strategies.{spec.name}", spec.params)
            self.strategies[spec.name] = base.create(spec.kind, spec.name, params, env)
        self.specs = list(settings.strategies)
        self.plans = make_plans(self.specs)
        self.plan_index = {p.id: i for i, p in enumerate(self.plans)}
        self._max_total = max((p.total for p in self.plans), default=1)
        self._recent = {name: _Recent() for name in self.strategies}
        for name in self.strategies:  # exported at 0 from the start, so dashboards show no gaps
            for metric in (metrics.strategy_errors, metrics.strategy_runs, metrics.strategy_hits):
                metrics.child(metric, name)
        self._inline = {name: bool(getattr(s, "inline", False)) for name, s in self.strategies.items()}
        self._action_set: ActionSet | None = None
        self._action_set_at = 0.0
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(self.strategies)), thread_name_prefix="ltrr-strategy")
        self.memory = next((s for s in self.strategies.values() if isinstance(s, MemoryStrategy)), None)
        self.vector = next((s for s in self.strategies.values() if isinstance(s, VectorStrategy)), None)

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ catalog
    def ingest(self, items: Sequence[Item], progress: Progress = no_progress) -> IngestChanges:
        """Adds or updates items, in SQL and in every index; only what changed is re-indexed."""
        dim = self.catalog.embedding_dim
        accepted: list[Item] = []
        rejected: list[tuple[str, str]] = []
        for item in items:
            if item.embedding is not None and dim and item.embedding_dims != dim:
                rejected.append((item.id, f"embedding: expected {dim} dimensions like the catalog, "
                                          f"got {item.embedding_dims}"))
                continue
            dim = dim or item.embedding_dims
            accepted.append(item)
        with self.catalog.applying(accepted, progress) as changes:
            changes.rejected = rejected
            changed = changes.added + changes.updated
            if changed:
                for s in self.strategies.values():
                    if isinstance(s, Indexes):
                        s.index(self.catalog, changed, progress)
        return changes

    def stale_indexes(self) -> dict[str, int]:
        """Strategies whose index holds another number of items than the catalog (a data folder
        lost or replaced, an ingest stopped before its indexes were built): name -> items it holds."""
        stale = {}
        for name, s in self.strategies.items():
            indexed = getattr(s, "indexed", None)
            if isinstance(s, Indexes) and indexed is not None and indexed() != len(self.catalog):
                stale[name] = int(indexed())
        return stale

    def reindex(self, names: Sequence[str], progress: Progress = no_progress) -> None:
        """Indexes the whole catalog again in these strategies."""
        positions = list(range(len(self.catalog)))
        for name in names:
            strategy = self.strategies[name]
            assert isinstance(strategy, Indexes)
            strategy.index(self.catalog, positions, progress)

    # ------------------------------------------------------------------ queries
    def prepare(self, text: str, embedding: Sequence[float]) -> Query:
        """Checks the query text and embedding; errors name the field."""
        if not text.strip():
            raise InvalidArgument("query", "is empty")
        if len(text) > self.settings.max_query_chars:
            raise InvalidArgument("query", f"longer than retrieval.max_query_chars={self.settings.max_query_chars}")
        normalized = normalize(text)
        if not normalized:
            raise InvalidArgument("query", "has no letters or digits")
        vec = None
        if embedding:
            if self.vector is None:
                raise InvalidArgument("query_embedding", "no vector strategy is configured")
            vec = self.vector.check_embedding(list(embedding), "query_embedding")
        return Query(text, normalized, tuple(normalized.split()), vec)

    def query_features(self, query: Query) -> Namespaces:
        seen = self.memory.known(query.normalized) if self.memory is not None else 0
        return query_features(query.tokens, query.normalized, self.catalog, seen)

    def action_set(self, now: float) -> ActionSet:
        """The plans with their current features, rebuilt every ``feature_refresh_seconds``."""
        current = self._action_set
        if current is not None and now - self._action_set_at < self.settings.feature_refresh_seconds:
            return current
        stats = {name: (round(r.hit_rate, 2), round(r.latency_ms, 1)) for name, r in self._recent.items()}
        feats = [plan_features(p, self._max_total, stats) for p in self.plans]
        ids = [p.id for p in self.plans]
        text = actions_to_json(zip(ids, feats, strict=True))
        key = hashlib.sha1(text.encode()).hexdigest()[:32]
        if current is not None and current.key == key:
            self._action_set_at = now
            return current
        self._action_set = ActionSet(ids, [action_line(pid, f) for pid, f in zip(ids, feats, strict=True)], text, key)
        self._action_set_at = now
        return self._action_set

    def fixed_plan_index(self, budgets: dict[str, int]) -> int:
        """The position among the plans (the policy's actions) of a caller's fixed plan."""
        return self.plan_index[plan_from_budgets(budgets, self.specs, "fixed_plan").id]

    # ------------------------------------------------------------------ running a plan
    def _run_one(self, name: str, query: Query, budget: int) -> StrategyRun:
        started_ns = time.time_ns()
        t0 = time.perf_counter()
        try:
            hits = self.strategies[name].retrieve(query, budget)
            error = ""
        except Exception as exc:  # one failing strategy must not fail the request
            log.exception("strategy %s failed", name)
            hits, error = [], f"{type(exc).__name__}: {exc}"
        return StrategyRun(name, budget, hits[:budget], time.perf_counter() - t0, error, started_ns)

    async def run(self, plan: Plan, query: Query, learn: bool) -> RetrievalResult:
        loop = asyncio.get_running_loop()
        running = plan.running()
        # Strategies that call into native code (which releases the GIL) run concurrently on worker
        # threads; quick pure-Python ones run here meanwhile: a thread hand-off costs them more
        # than they take (Retrieve at the largest plan: 3.0-3.7 ms instead of 4.0-4.2 ms, 2 cores).
        threaded = {name: loop.run_in_executor(self._pool, self._run_one, name, query, budget)
                    for name, budget in running if not self._inline[name]} if len(running) > 1 else {}
        inline = {name: self._run_one(name, query, budget) for name, budget in running if name not in threaded}
        done = dict(zip(threaded, await asyncio.gather(*threaded.values()), strict=True)) if threaded else {}
        runs = [inline[name] if name in inline else done[name] for name, _ in running]
        for r in runs:
            self.metrics.child(self.metrics.strategy_duration, r.strategy).observe(r.seconds)
            self.metrics.child(self.metrics.strategy_candidates, r.strategy).observe(len(r.hits))
            if r.error:
                self.metrics.child(self.metrics.strategy_errors, r.strategy).inc()
            recent = self._recent[r.strategy]
            recent.latency_ms += _EWMA * (r.seconds * 1000.0 - recent.latency_ms)
        return self._fuse(plan, query, runs, learn)

    def _fuse(self, plan: Plan, query: Query, runs: list[StrategyRun], learn: bool) -> RetrievalResult:
        """Reciprocal rank fusion of the runs' lists; each candidate keeps its provenance."""
        k = self.settings.rrf_k
        fused: dict[int, float] = {}
        masks: dict[int, int] = {}
        provenance: dict[int, list[Provenance]] = {}
        drawn = 0
        for bit, run in enumerate(runs):
            drawn += len(run.hits)
            flag = 1 << bit
            for rank, (pos, score) in enumerate(run.hits, 1):
                if pos in fused:
                    fused[pos] += 1.0 / (k + rank)
                    masks[pos] |= flag
                    provenance[pos].append((run.strategy, score, rank))
                else:
                    fused[pos] = 1.0 / (k + rank)
                    masks[pos] = flag
                    provenance[pos] = [(run.strategy, score, rank)]
        order = sorted(fused, key=fused.__getitem__, reverse=True)
        ids = self.catalog.ids
        record = RetrievalRecord(
            query=query.normalized, positions=array("l", order), masks=bytes(masks[p] for p in order),
            strategies=tuple(r.strategy for r in runs), drawn=drawn, learn=learn,
        )
        return RetrievalResult(plan, runs, [ids[p] for p in order], [fused[p] for p in order],
                               [provenance[p] for p in order], record)

    # ------------------------------------------------------------------ rewards
    def default_reward(self, record: RetrievalRecord) -> float:
        """The plan's reward when nobody engaged: only the cost of what it drew."""
        return -self.settings.cost_per_candidate * record.drawn

    def engaged_positions(self, item_ids: Iterable[str]) -> list[int]:
        index = self.catalog.index
        return [p for p in (index.get(i) for i in item_ids) if p is not None]

    def reward_value(self, record: RetrievalRecord, engaged: list[int]) -> float:
        """1 if an engaged item is among the candidates (for a Search, with ``ranking.page_reward``:
        on the page), minus the cost of every candidate drawn."""
        if record.page is not None and self.settings.ranking.page_reward:
            found = any(p in record.page.positions for p in engaged)
        else:
            found = any(p in record.positions for p in engaged)
        return (1.0 if found else 0.0) + self.default_reward(record)

    def on_joined(self, policy: str, record: RetrievalRecord) -> None:
        """Credits the strategies that found an engaged item; teaches the memory strategy."""
        engaged = record.engaged or []
        hit_mask = 0
        found = False
        if engaged:
            where = {p: i for i, p in enumerate(record.positions)}
            for p in engaged:
                i = where.get(p)
                if i is not None:
                    hit_mask |= record.masks[i]
                    found = True
        for bit, name in enumerate(record.strategies):
            hit = bool(hit_mask & (1 << bit))
            self.metrics.child(self.metrics.strategy_runs, name).inc()
            if hit:
                self.metrics.child(self.metrics.strategy_hits, name).inc()
            recent = self._recent[name]
            recent.hit_rate += _EWMA * ((1.0 if hit else 0.0) - recent.hit_rate)
        self.metrics.child(self.metrics.retrieval_joins, policy, "found" if found else "missed").inc()
        for s in self.strategies.values():
            if isinstance(s, LearnsFromEngagement):
                s.observe(record.query, engaged)

    def flush(self) -> None:
        for s in self.strategies.values():
            if isinstance(s, LearnsFromEngagement):
                try:
                    s.flush()
                except Exception:
                    log.exception("strategy %s: flush failed; retried at the next one", s.name)


