"""The online ranker: a Vowpal Wabbit regression of each candidate's relevance, learned from every page.

Each shown item's target is its engagement grade divided by the examination probability of the
position it was shown at (0 when not engaged): under the position-based click model its
expectation is the item's relevance times the grade, whatever position it was shown at, so
the ranker learns relevance, not position (the pointwise inverse-propensity estimator).

>>> from ltrr_server.ranking.features import FeatureSpace
>>> ranker = OnlineRanker(learning_rate=0.5)
>>> for _ in range(50):
...     ranker.learn(["1 |s lexical_score:2 |t k=song |h", "0 |s vector_score:1 |t k=song |h"])
>>> a, b = ranker.score(["|s lexical_score:2 |t k=song |h", "|s vector_score:1 |t k=song |h"])
>>> a > 0.5 > b
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import vowpal_wabbit_next as vw
from vowpal_wabbit_next import _core

if TYPE_CHECKING:
    from ltrr_server.ranking.features import Candidates

# Query hints crossed with strategies, item fields, matches and the item type.
INTERACTIONS = ("hs", "hi", "hm", "ht")


class OnlineRanker:
    """One VW workspace (squared loss), used by one thread: the server's event loop."""

    kind = "online"

    def __init__(self, learning_rate: float = 0.05, model: bytes | None = None, version: int = 0) -> None:
        if model is not None:
            self._ws = vw.Workspace(["--quiet"], model_data=model)
        else:
            args = ["--quiet", "-b", "20", "-l", repr(learning_rate), "--loss_function", "squared"]
            for pair in INTERACTIONS:
                args += ["-q", pair]
            self._ws = vw.Workspace(args)
        # The extension module under the public wrapper, as in policy/model.py (the same pin):
        # parsing and predicting 200 candidates costs 0.27 ms this way.
        self._core: Any = self._ws._workspace
        # Pages learned: the ranker's version.
        self.version = version

    def score(self, lines: Sequence[str]) -> list[float]:
        core, parse = self._core, _core._parse_line_text
        return [float(core.predict_one(parse(core, line))) for line in lines]

    def score_candidates(self, candidates: Candidates) -> list[float]:
        return self.score(candidates.lines())

    def learn(self, lines: Sequence[str]) -> None:
        """Learns one page: each line labelled with its target (``"1.5 |s ..."``)."""
        core, parse = self._core, _core._parse_line_text
        for line in lines:
            core.learn_one(parse(core, line))
        self.version += 1

    def to_bytes(self) -> bytes:
        return bytes(self._ws.serialize())
