"""Per-window means of named figures, one accumulator per arm of a simulation.

>>> m = Means("queries")
>>> m.add(recall=1.0, candidates=200)
>>> m.add(recall=0.0, candidates=100)
>>> m.summary()
{'recall': 0.5, 'candidates': 150.0, 'queries': 2.0}
"""

from __future__ import annotations


class Means:
    """Sums of named figures and how many were added; ``summary`` gives their means and the count
    under ``count_name``."""

    __slots__ = ("count_name", "count", "sums")

    def __init__(self, count_name: str) -> None:
        self.count_name = count_name
        self.count = 0
        self.sums: dict[str, float] = {}

    def add(self, **figures: float) -> None:
        self.count += 1
        sums = self.sums
        for name, value in figures.items():
            sums[name] = sums.get(name, 0.0) + value

    def summary(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {name: total / n for name, total in self.sums.items()} | {self.count_name: float(self.count)}
