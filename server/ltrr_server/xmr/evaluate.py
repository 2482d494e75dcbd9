"""Held-out figures: recall@k, and the negative flip rate between two models.

>>> hits_old, hits_new = [True, True, False, False], [True, False, True, False]
>>> recall(hits_new), negative_flip_rate(hits_old, hits_new)
(0.5, 0.25)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ltrr_server.xmr.model import XmrModel


def hits_at(model: XmrModel, queries: Sequence[str], targets: Sequence[str], k: int, batch: int = 4096) -> list[bool]:
    """Per pair, whether the target is among the model's top ``k``."""
    out: list[bool] = []
    for i in range(0, len(queries), batch):
        preds = model.predict(queries[i:i + batch], k=k)
        out += [t in {label for label, _ in p} for p, t in zip(preds, targets[i:i + batch], strict=True)]
    return out


def recall(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def negative_flip_rate(old: Sequence[bool], new: Sequence[bool]) -> float:
    """Share of all cases the old model got right and the new one gets wrong."""
    if not old:
        return 0.0
    return sum(o and not n for o, n in zip(old, new, strict=True)) / len(old)


def strategy_hits(retrieve: Callable[[str, int], list[str]], queries: Sequence[str], targets: Sequence[str],
                  k: int) -> list[bool]:
    """Per pair, whether ``retrieve(query, k)`` (item ids, best first) has the target."""
    return [t in retrieve(q, k) for q, t in zip(queries, targets, strict=True)]


def recall_table(methods: dict[str, Callable[[str, int], list[str]]], queries: Sequence[str],
                 targets: Sequence[str], ks: Sequence[int] = (10, 100)) -> dict[str, dict[str, float]]:
    """Recall@k of every method on the same (query, target) pairs, with per-query latency."""
    out: dict[str, dict[str, float]] = {}
    for name, fn in methods.items():
        row: dict[str, float] = {}
        for k in ks:
            t0 = time.perf_counter()
            row[f"recall_at_{k}"] = recall(strategy_hits(fn, queries, targets, k))
            row[f"ms_per_query_at_{k}"] = (time.perf_counter() - t0) / max(len(queries), 1) * 1000
        out[name] = row
    return out
