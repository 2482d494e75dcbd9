"""``memory``: query-to-item engagement statistics learned online from rewards.

For each normalized query: how often it was asked (impressions) and how often each item was
engaged with. Items rank by their smoothed engagement rate,
``(engagements + smoothing * prior_rate) / (impressions + smoothing)``. Empty at cold start;
kept in memory and upserted to SQL (``memory_stats``) by ``flush``, loaded at start.

>>> import sqlalchemy as sa, tempfile
>>> from pathlib import Path
>>> from ltrr_server.catalog.catalog import Catalog
>>> from ltrr_server.catalog.items import Item
>>> from ltrr_server.log import db
>>> engine = db.create_engine(f"sqlite:///{tempfile.mkdtemp()}/m.db"); db.migrate(engine)
>>> catalog = Catalog(engine); _ = catalog.apply([Item(f"item-{k}") for k in range(8)])
>>> env = StrategyEnv(catalog, Path(tempfile.mkdtemp()), engine)
>>> m = MemoryStrategy("memory", Params("m", {}), env)
>>> q = Query("Road trip", "road trip", ("road", "trip"))
>>> m.retrieve(q, 10)
[]
>>> m.observe("road trip", [7]); m.observe("road trip", [7]); m.observe("road trip", [3])
>>> [p for p, _ in m.retrieve(q, 10)]
[7, 3]
>>> m.flush()
>>> [p for p, _ in MemoryStrategy("memory", Params("m", {}), env).retrieve(q, 10)]
[7, 3]
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ltrr_server.log import schema as t
from ltrr_server.strategies.base import Hit, Params, Query, StrategyEnv, register


class _Stats:
    __slots__ = ("impressions", "engaged", "ranked")

    def __init__(self) -> None:
        self.impressions = 0
        self.engaged: dict[int, int] = {}
        # Engaged items by count, recomputed lazily after a change.
        self.ranked: list[tuple[int, int]] | None = None


class MemoryStrategy:
    kind = "memory"
    inline = True  # a dictionary look-up

    def __init__(self, name: str, params: Params, env: StrategyEnv) -> None:
        self.name = name
        self.prior_rate = params.number("prior_rate", 0.01, 0.0, 1.0)
        self.smoothing = params.number("smoothing", 1.0, 0.0, 1e6)
        self.max_queries = int(params.number("max_queries", 1_000_000, 1, 1e9))
        self._catalog = env.catalog
        self._engine = env.engine
        self._stats: OrderedDict[str, _Stats] = OrderedDict()
        self._dirty: set[tuple[str, int]] = set()
        self._flush_lock = threading.Lock()
        self._load()

    def __len__(self) -> int:
        return len(self._stats)

    def _load(self) -> None:
        m = t.memory_stats
        with self._engine.connect() as conn:
            for query, item_id, count in conn.execute(sa.select(m.c.query, m.c.item_id, m.c.count)
                                                      .order_by(m.c.updated_at)):
                st = self._stats.get(query)
                if st is None:
                    st = self._stats[query] = _Stats()
                if item_id == "":
                    st.impressions = int(count)
                else:
                    pos = self._catalog.index.get(item_id)
                    if pos is not None:
                        st.engaged[pos] = int(count)

    def retrieve(self, query: Query, budget: int) -> list[Hit]:
        st = self._stats.get(query.normalized)
        if st is None or budget <= 0 or not st.engaged:
            return []
        ranked = st.ranked
        if ranked is None:
            ranked = st.ranked = sorted(st.engaged.items(), key=lambda kv: -kv[1])
        denom = st.impressions + self.smoothing
        prior = self.smoothing * self.prior_rate
        return [(pos, (n + prior) / denom) for pos, n in ranked[:budget]]

    def known(self, query: str) -> int:
        """How often the query was seen (0: never): a feature the policy uses."""
        st = self._stats.get(query)
        return st.impressions if st is not None else 0

    def engagement(self, query: str) -> tuple[int, dict[int, int]]:
        """The query's impressions and its engaged items (position -> engagements): ranking features."""
        st = self._stats.get(query)
        return (st.impressions, st.engaged) if st is not None else (0, {})

    def observe(self, query: str, engaged: list[int]) -> None:
        """One joined retrieval: the query was asked, and these items were engaged with."""
        if not query:
            return
        st = self._stats.get(query)
        if st is None:
            st = self._stats[query] = _Stats()
            if len(self._stats) > self.max_queries:
                self._stats.popitem(last=False)
        else:
            self._stats.move_to_end(query)
        st.impressions += 1
        self._dirty.add((query, -1))
        for pos in set(engaged):
            st.engaged[pos] = st.engaged.get(pos, 0) + 1
            self._dirty.add((query, pos))
        if engaged:
            st.ranked = None

    def flush(self) -> None:
        """Upserts the changed statistics (absolute counts, so a repeated flush is harmless)."""
        with self._flush_lock:
            dirty, self._dirty = self._dirty, set()
            if not dirty:
                return
            now = time.time()
            rows = []
            for query, pos in dirty:
                st = self._stats.get(query)
                if st is None:
                    continue
                if pos < 0:
                    rows.append({"query": query, "item_id": "", "count": st.impressions, "updated_at": now})
                elif pos in st.engaged and pos < len(self._catalog):
                    rows.append({"query": query, "item_id": self._catalog.ids[pos],
                                 "count": st.engaged[pos], "updated_at": now})
            insert = (postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert)
            stmt = insert(t.memory_stats)
            stmt = stmt.on_conflict_do_update(
                index_elements=["query", "item_id"],
                set_={"count": stmt.excluded.count, "updated_at": stmt.excluded.updated_at},
            )
            try:
                with self._engine.begin() as conn:
                    for i in range(0, len(rows), 5000):
                        conn.execute(stmt, rows[i:i + 5000])
            except Exception:
                self._dirty |= dirty  # try again at the next flush
                raise


@register("memory")
def _create(name: str, params: Params, env: StrategyEnv) -> MemoryStrategy:
    return MemoryStrategy(name, params, env)



