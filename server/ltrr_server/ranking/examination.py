"""Position bias, estimated from the ranker's own randomized swaps (intervention harvesting).

Under the position-based click model an item at position k is engaged with probability
θ_k · γ(item): θ_k, the chance that position k is examined at all, is what an engagement must
be divided by to say how relevant the item is. On a share of pages the ranker swaps two
adjacent results (``explore.draw_page``), at random and independently of the query, so for each
pair of positions (k, k+1)

    θ_{k+1} / θ_k = (S_{k+1}/n_s + U_{k+1}/n_u) / (S_k/n_s + U_k/n_u)

where S are engagements at each position on pages where that pair was swapped (n_s pages) and U
those on pages without any swap (n_u): both sums hold the same two items' relevance, once at each
position (Joachims, Swaminathan and Schnabel, "Unbiased Learning-to-Rank with Biased Feedback",
WSDM 2017; Agarwal et al., "Estimating Position Bias without Intrusive Interventions", WSDM 2019).
Each ratio is shrunk toward the prior θ_k = 1/k by ``prior`` engagements' worth, so the first
pages learn as if examination fell as 1/k.

>>> est = Examination(depth=3)
>>> [round(t, 3) for t in est.theta(4)]  # the prior alone (past the depth, its last ratio goes on)
[1.0, 0.5, 0.333, 0.222]
>>> import random
>>> rng, theta, relevance = random.Random(7), (1.0, 0.7), (0.6, 0.2)  # the truth: θ_2 = 0.7
>>> for page in range(20000):
...     swapped = 0 if page % 5 == 0 else None
...     shown = relevance[::-1] if swapped == 0 else relevance
...     est.observe(swapped, {k: 1.0 for k in (0, 1) if rng.random() < theta[k] * shown[k]})
>>> round(est.theta(2)[1], 1)
0.7
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Examination:
    """Per-position examination probabilities θ_1..θ_depth (θ_1 = 1), from swap interventions."""

    def __init__(self, depth: int, prior: float = 20.0, floor: float = 0.01) -> None:
        self.depth = depth
        self.prior = prior
        self.floor = floor
        self.plain_pages = 0
        self.plain = [0.0] * depth
        self.swapped_pages = [0] * max(depth - 1, 0)
        # Per swapped pair k: engagements at position k and at k+1.
        self.swapped = [[0.0, 0.0] for _ in range(max(depth - 1, 0))]
        self._theta: list[float] | None = None

    def observe(self, swapped: int | None, engaged: Mapping[int, float]) -> None:
        """One page: ``swapped`` is the pair (k, k+1) swapped (0-based k) or None; ``engaged`` maps
        0-based positions to engagement (1 for a click; a grade counts as one)."""
        self._theta = None
        if swapped is None:
            self.plain_pages += 1
            for k, g in engaged.items():
                if k < self.depth and g > 0:
                    self.plain[k] += 1.0
        elif 0 <= swapped < self.depth - 1:
            self.swapped_pages[swapped] += 1
            for k in (swapped, swapped + 1):
                if engaged.get(k, 0.0) > 0:
                    self.swapped[swapped][k - swapped] += 1.0

    def ratios(self) -> list[float]:
        """θ_{k+1}/θ_k for each pair, shrunk toward the prior's k/(k+1)."""
        out = []
        for k in range(self.depth - 1):
            prior = (k + 1) / (k + 2)
            n_s, n_u = self.swapped_pages[k], self.plain_pages
            if n_s == 0 or n_u == 0:
                out.append(prior)
                continue
            s_k, s_k1 = self.swapped[k]
            num = s_k1 / n_s + self.plain[k + 1] / n_u
            den = s_k / n_s + self.plain[k] / n_u
            # How many engagements the estimate rests on (the two pair cells of the swapped pages).
            weight = s_k + s_k1
            if den <= 0:
                out.append(prior)
                continue
            ratio = min(max(num / den, 0.05), 1.5)
            out.append((weight * ratio + self.prior * prior) / (weight + self.prior))
        return out

    def theta(self, n: int) -> list[float]:
        """θ for positions 1..n (beyond the depth, the last ratio continues)."""
        if self._theta is None or len(self._theta) < n:
            ratios = self.ratios()
            theta = [1.0]
            for k in range(1, max(n, self.depth)):
                r = ratios[k - 1] if k - 1 < len(ratios) else (ratios[-1] if ratios else k / (k + 1))
                theta.append(max(theta[-1] * r, self.floor))
            self._theta = theta
        return self._theta[:n]

    def to_json(self) -> dict[str, Any]:
        return {"depth": self.depth, "plain_pages": self.plain_pages, "plain": self.plain,
                "swapped_pages": self.swapped_pages, "swapped": self.swapped}

    def load_json(self, data: Mapping[str, Any]) -> None:
        """Counts saved by ``to_json`` (from a ranker with the same depth; others are ignored)."""
        if data.get("depth") != self.depth:
            return
        self.plain_pages = int(data["plain_pages"])
        self.plain = [float(v) for v in data["plain"]]
        self.swapped_pages = [int(v) for v in data["swapped_pages"]]
        self.swapped = [[float(a), float(b)] for a, b in data["swapped"]]
        self._theta = None
