"""Search's ranking stage: features for the union, the page, its exploration, and learning from engagement.

The retriever returns the union of a plan's candidates; ``rank`` computes their features
(``features.FeatureSpace``), scores them with the policy's online ranker, orders them, and
draws the page (``explore.draw_page``: sometimes two adjacent results swapped, with the page's
probability). What learning needs is kept on the pending decision as a ``PageRecord``; once its
rewards are joined, ``on_joined`` updates the examination estimate from the page and teaches the
ranker each shown item's engagement divided by its position's examination probability.

Rankers are per policy, kept in ``<data_dir>/ranking`` (model and examination counts) by
``flush``, and used by the server's event loop thread only.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import sqlalchemy as sa

from ltrr_server.bounds import MAX_ABS_REWARD
from ltrr_server.catalog.catalog import Catalog
from ltrr_server.config import RankingSettings
from ltrr_server.errors import FailedPrecondition, NotFound
from ltrr_server.features import Namespaces, dumps
from ltrr_server.log.rows import PageRow
from ltrr_server.metrics import Metrics
from ltrr_server.ranking.examination import Examination
from ltrr_server.ranking.explore import draw_page
from ltrr_server.ranking.features import NO_MEMORY, Candidates, FeatureSpace, MemoryView
from ltrr_server.ranking.lambdamart import LambdaMartRanker
from ltrr_server.ranking.online import OnlineRanker
from ltrr_server.ranking.users import UserHistory

log = logging.getLogger(__name__)

RANKER, FUSION, POPULARITY, MODEL = "ranker", "fusion", "popularity", "model"
ORDERS = (RANKER, FUSION, POPULARITY, MODEL)
# A configured model ranker that cannot serve is said in the log at most this often.
_WARN_SECONDS = 60.0


@runtime_checkable
class Ranker(Protocol):
    """What orders a page: a score for each candidate of the union, higher first. The online
    ranker (``online.OnlineRanker``) and a trained one (``lambdamart.LambdaMartRanker``) are two."""

    def score_candidates(self, candidates: Candidates) -> list[float]: ...


@dataclass(slots=True)
class PageRecord:
    """What learning from a page needs, kept on its pending decision until the join."""

    positions: list[int]  # catalog positions shown, in page order
    matrix: np.ndarray[Any, np.dtype[np.float32]]  # their feature rows
    kinds: np.ndarray[Any, np.dtype[np.uint16]]
    tails: dict[int, str]
    swapped: int | None
    learn: bool
    user: str


@dataclass(slots=True)
class Page:
    """A ranked page: indices into the union (fused order), each one's score, and how it was drawn."""

    order: list[int]
    scores: list[float]
    probability: float
    ranker: str
    version: int
    record: PageRecord
    row: PageRow


def _file_name(policy: str) -> str:
    return policy.replace("/", "~")


class Ranking:
    def __init__(
        self, settings: RankingSettings, strategies: Sequence[str], catalog: Catalog, memory: Any,
        engine: sa.Engine, data_dir: Path, metrics: Metrics, rng: random.Random | None = None,
        live_models: Any = None,
    ) -> None:
        self.settings = settings
        self.space = FeatureSpace(strategies, settings.features)
        self._catalog = catalog
        self._memory = memory
        self._metrics = metrics
        self._dir = Path(data_dir) / "ranking"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._rng = rng or random.Random()
        self.users = UserHistory(engine, catalog, settings.user_history, settings.max_users)
        self._rankers: dict[str, OnlineRanker] = {}
        self._exams: dict[str, Examination] = {}
        self._changed: set[str] = set()
        self._live = live_models
        self._warned_at = 0.0

    # ------------------------------------------------------------------ per policy
    def ranker(self, policy: str) -> OnlineRanker:
        ranker = self._rankers.get(policy)
        if ranker is None:
            model = self._dir / f"{_file_name(policy)}.vw"
            state = self._dir / f"{_file_name(policy)}.json"
            ranker = None
            if model.exists() and state.exists():
                try:
                    saved = json.loads(state.read_text())
                    ranker = OnlineRanker(model=model.read_bytes(), version=int(saved["version"]))
                    exam = self.examination(policy)
                    exam.load_json(saved["examination"])
                    self._export(policy, exam)
                except Exception:  # a damaged file: learn again from scratch, and say so
                    log.exception("ranking: the saved ranker of policy %r could not be read; starting afresh",
                                  policy)
                    ranker = None
            if ranker is None:
                ranker = OnlineRanker(self.settings.learning_rate)
            self._rankers[policy] = ranker
        return ranker

    def examination(self, policy: str) -> Examination:
        exam = self._exams.get(policy)
        if exam is None:
            exam = self._exams[policy] = Examination(self.settings.explore_depth)
            self._export(policy, exam)
        return exam

    def _export(self, policy: str, exam: Examination) -> None:
        for k, theta in enumerate(exam.theta(exam.depth), 1):
            self._metrics.examination.labels(policy, str(k)).set(theta)

    # ------------------------------------------------------------------ ranking
    def rank(
        self, policy: str, event_id: str, positions: Sequence[int], fused: Sequence[float],
        provenance: Sequence[Sequence[tuple[str, float, int]]], normalized_query: str, hints: Namespaces,
        context: Namespaces, user: str, page_size: int, order: str, learn: bool, model: str = "",
    ) -> Page:
        """Orders the union (``positions`` in fused order) and draws the page of ``page_size``.

        ``order``: the configured ranker (explored, learned), or a baseline: fusion, popularity, or
        the live version of the trained ranker ``model``."""
        t0 = time.perf_counter()
        settings, catalog = self.settings, self._catalog
        page_size = page_size or settings.page_size
        entity = next((v for ns, feats in hints if ns == "h" for f, v in feats if f == "entity"), "none")
        memory = MemoryView(*self._memory.engagement(normalized_query)) if self._memory is not None else NO_MEMORY
        matrix = self.space.compute(positions, fused, provenance, catalog, normalized_query, str(entity),
                                    memory, self.users.view(user))
        pos = np.asarray(positions, dtype=np.int64)
        kinds = catalog.kinds[pos]
        tails = self.space.tails(hints, context, kinds.tolist(), catalog)
        configured = settings.ranker
        trained: tuple[int, LambdaMartRanker] | None = None
        if order == RANKER and configured.startswith("model:"):
            trained = self._configured_model(configured[6:])
            if trained is None:  # said in the log; the online ranker serves meanwhile
                configured = "online"
            else:
                model, order = configured[6:], MODEL
        elif order == MODEL:
            trained = self.live_model(model)
        version = 0
        ranker: Ranker | None = None
        if order == RANKER and configured == "fusion":
            ranked, scores, name = list(range(len(positions))), list(fused), FUSION
        elif order == RANKER:
            online = self.ranker(policy)
            ranker, version, name = online, online.version, "online"
        elif trained is not None:
            version, ranker = trained
            name = f"model:{model}"
        elif order == POPULARITY:
            pops = catalog.popularity[pos].tolist()
            ranked = sorted(range(len(pops)), key=lambda j: -pops[j])
            scores, name = pops, POPULARITY
        else:
            ranked, scores, name = list(range(len(positions))), list(fused), FUSION
        if ranker is not None:
            scores = ranker.score_candidates(Candidates(self.space, matrix, kinds, catalog.kind_names, tails))
            # Ties (a fresh online ranker scores everything alike) keep the fused order.
            ranked = sorted(range(len(scores)), key=lambda j: -scores[j])
        # The configured ranker's pages explore and are learned; a baseline's are not.
        learned = learn and (order == RANKER or (order == MODEL and settings.ranker == f"model:{model}"))
        top = ranked[:page_size]
        swapped, probability = None, 1.0
        if learned:
            top, swapped, probability = draw_page(top, settings.explore_depth, settings.explore, self._rng)
        shown = [positions[j] for j in top]
        record = PageRecord(shown, matrix[top], kinds[top], tails, swapped, learned, user)
        ids = catalog.ids
        row = PageRow(event_id, policy, time.time(), name, version, probability, swapped, user,
                      dumps([ids[p] for p in shown]),
                      dumps({"names": self.space.names, "rows": np.round(matrix[top], 5).tolist(),
                             "kinds": [catalog.kind_names[k] for k in kinds[top].tolist()]}),
                      record.learn)
        self._metrics.child(self._metrics.ranking_duration, policy).observe(time.perf_counter() - t0)
        return Page(top, [scores[j] for j in top], probability, name, version, record, row)

    def live_model(self, name: str) -> tuple[int, LambdaMartRanker]:
        """The live (version, model) of the trained ranker ``name``; NotFound or FailedPrecondition naming it."""
        if self._live is None:
            raise FailedPrecondition("no trained rankers here: the model registry is not loaded", field="model")
        found: tuple[int, LambdaMartRanker] = self._live.get(name, LambdaMartRanker)
        return found

    def _configured_model(self, name: str) -> tuple[int, LambdaMartRanker] | None:
        """``live_model`` for the configured ranker, or None when it cannot serve (logged at most once a minute)."""
        try:
            return self.live_model(name)
        except (FailedPrecondition, NotFound) as exc:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_SECONDS:
                self._warned_at = now
                log.warning("ranking: ranker = \"model:%s\" cannot serve (%s); the online ranker orders the "
                            "pages meanwhile", name, exc.message)
            return None

    # ------------------------------------------------------------------ learning
    def on_joined(self, policy: str, page: PageRecord, grades: Mapping[int, float]) -> None:
        """A page's rewards are in: the user's history, the examination estimate and the ranker learn."""
        engaged = [p for p in page.positions if grades.get(p, 0.0) > 0]
        self._metrics.child(self._metrics.search_pages, policy, "engaged" if engaged else "none",
                            "yes" if page.learn else "no").inc()
        if engaged:
            self.users.add(page.user, engaged)
        if not page.learn:
            return
        exam = self.examination(policy)
        exam.observe(page.swapped, {k: 1.0 for k, p in enumerate(page.positions) if grades.get(p, 0.0) > 0})
        theta = exam.theta(len(page.positions))
        floor = self.settings.min_examination
        # Bounded as the policies' rewards are: past it, one extreme grade would outweigh every other page.
        labels = [f"{min(grades.get(p, 0.0) / max(theta[k], floor), MAX_ABS_REWARD):.5g}"
                  for k, p in enumerate(page.positions)]
        self.ranker(policy).learn(self.space.lines(page.matrix, page.kinds, page.tails, labels))
        self._changed.add(policy)

    def saves(self) -> list[tuple[Path, bytes, str]]:
        """The rankers that learned since the last call, as files to write (``write``). Runs on the
        event loop thread, the only one that touches a ranker."""
        changed, self._changed = self._changed, set()
        out = []
        for policy in changed:
            ranker, exam = self._rankers[policy], self.examination(policy)
            out.append((self._dir / _file_name(policy), ranker.to_bytes(),
                        json.dumps({"version": ranker.version, "examination": exam.to_json()})))
            self._export(policy, exam)
        return out

    # One writer at a time: the flush loop's write may still run on its worker thread when the stop
    # writes the last saves, and both go through the same temporary file.
    _write_lock = threading.Lock()

    @classmethod
    def write(cls, saves: Sequence[tuple[Path, bytes, str]]) -> None:
        """Writes what ``saves`` returned, each file whole or not at all (any thread)."""
        with cls._write_lock:
            cls._write(saves)

    @staticmethod
    def _write(saves: Sequence[tuple[Path, bytes, str]]) -> None:
        for base, model, state in saves:
            tmp = base.with_suffix(".tmp")
            tmp.write_bytes(model)
            tmp.replace(base.with_suffix(".vw"))
            tmp.write_text(state)
            tmp.replace(base.with_suffix(".json"))
