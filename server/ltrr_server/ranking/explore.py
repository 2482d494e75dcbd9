"""Exploration within the page: a randomized swap of two adjacent results, with its probability.

With probability ``explore`` one pair (k, k+1) among the top ``depth`` positions is chosen
uniformly and swapped; the page's probability given the ranker's order is logged with it.

>>> import random
>>> draw_page(list("abcde"), depth=4, explore=0.0, rng=random.Random(1))
(['a', 'b', 'c', 'd', 'e'], None, 1.0)
>>> page, swapped, p = draw_page(list("abcde"), depth=4, explore=1.0, rng=random.Random(1))
>>> swapped is not None and page[swapped] == "abcde"[swapped + 1], round(p, 4)
(True, 0.3333)
"""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def draw_page(order: list[T], depth: int, explore: float, rng: random.Random) -> tuple[list[T], int | None, float]:
    """The page shown, the swapped pair's first position (0-based) or None, and the page's probability."""
    pairs = min(depth, len(order)) - 1
    if pairs < 1 or explore <= 0:
        return order, None, 1.0
    if rng.random() >= explore:
        return order, None, 1.0 - explore
    k = rng.randrange(pairs)
    page = list(order)
    page[k], page[k + 1] = page[k + 1], page[k]
    return page, k, explore / pairs
