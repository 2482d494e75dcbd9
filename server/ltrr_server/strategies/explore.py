"""``explore``: recently added and long-tail items that loosely match the query.

The pool is every item added within ``recent_days`` of the newest one, plus the least popular
``tail_share`` of the catalog. Pool items sharing at least one token with the query rank by
matching tokens, then recency; ``random_share`` of the budget goes to random matching tail
items, so the log gets counterfactual data about items no other strategy would show.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np

from ltrr_server.catalog.catalog import Catalog, Progress, normalize
from ltrr_server.strategies.base import Hit, Params, Query, StrategyEnv, register

_DAY = 86400.0


class ExploreStrategy:
    kind = "explore"
    inline = True  # small posting lists in Python

    def __init__(self, name: str, params: Params, env: StrategyEnv) -> None:
        self.name = name
        self.recent_days = params.number("recent_days", 30.0, 0.0, 36500.0)
        self.tail_share = params.number("tail_share", 0.2, 0.0, 1.0)
        self.random_share = params.number("random_share", 0.2, 0.0, 1.0)
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._postings: dict[str, list[int]] = {}
        self._recency: np.ndarray[Any, Any] = np.zeros(0)
        self._recent: set[int] = set()
        self.index(env.catalog, [], lambda *_: None)

    def index(self, catalog: Catalog, positions: list[int], progress: Progress) -> None:
        """Rebuilds the pool (cheap: it is a small part of the catalog)."""
        n = len(catalog)
        if n == 0:
            return
        created = catalog.created_at
        newest = float(created.max())
        recent = set(np.flatnonzero(created >= newest - self.recent_days * _DAY).tolist())
        tail: set[int] = set()
        if self.tail_share > 0:
            cut = float(np.quantile(catalog.popularity, self.tail_share))
            tail = set(np.flatnonzero(catalog.popularity <= cut).tolist())
        postings: dict[str, list[int]] = {}
        pool = sorted(recent | tail)
        for pos, item in zip(pool, catalog.iter_items(pool), strict=True):
            for tok in set(normalize(item.text() + " " + item.type).split()):
                postings.setdefault(tok, []).append(pos)
        # Newest first inside every posting list.
        for plist in postings.values():
            plist.sort(key=lambda p: -created[p])
        recency = (created - newest) / (_DAY * max(self.recent_days, 1.0))
        with self._lock:
            self._postings, self._recency, self._recent = postings, recency, recent
        progress(f"index {self.name}", 1, 1)

    def retrieve(self, query: Query, budget: int) -> list[Hit]:
        postings, recency, recent = self._postings, self._recency, self._recent
        if budget <= 0 or not postings:
            return []
        scores: dict[int, float] = {}
        for tok in query.tokens:
            for pos in postings.get(tok, ())[:2000]:
                scores[pos] = scores.get(pos, 0.0) + 1.0
        if not scores:
            return []
        n_random = int(budget * self.random_share)
        ranked = sorted(scores, key=lambda p: (-scores[p], -(p in recent), -recency[p]))
        head = ranked[: budget - n_random]
        rest = ranked[budget - n_random:]
        extra = self._rng.sample(rest, min(n_random, len(rest))) if n_random and rest else []
        return [(p, scores[p] + float(recency[p])) for p in head + extra]


@register("explore")
def _create(name: str, params: Params, env: StrategyEnv) -> ExploreStrategy:
    return ExploreStrategy(name, params, env)
