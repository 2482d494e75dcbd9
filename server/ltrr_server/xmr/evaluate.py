"""Held-out figures: recall@k, and the negative flip rate between two models.

>>> hits_old, hits_new = [True, True, False, False], [True, False, True, False]
>>> recall(hits_new), negative_flip_rate(hits_old, hits_new)
(0.5, 0.25)
"""

from __future__ import annotations

from collections.abc import Sequence

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
