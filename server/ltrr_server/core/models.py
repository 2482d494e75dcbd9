"""Trained models behind the ModelService: XR-Linear predictions, autocompletion, the registry, promotion."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltrr_server.bounds import ID_CHARS, MAX_COMPLETIONS, MAX_K
from ltrr_server.catalog.catalog import normalize
from ltrr_server.config import Limits
from ltrr_server.core.sessions import Sessions
from ltrr_server.errors import FailedPrecondition, InvalidArgument
from ltrr_server.ranking.lambdamart import HELDOUT_FILE, LambdaMartRanker
from ltrr_server.ranking.lambdamart import compare as compare_pages
from ltrr_server.ranking.pagelog import LoggedPages
from ltrr_server.tenancy import INSIDE_CHARS
from ltrr_server.xmr.live import LiveModels
from ltrr_server.xmr.model import Ranked, XmrModel
from ltrr_server.xmr.registry import ModelRegistry, load_model
from ltrr_server.xmr.train import compare

log = logging.getLogger(__name__)

# XmrPredict requests with at most this many queries predict on the event loop (at most about
# 5 ms of it here); bigger ones in one call on a worker thread, where PECOS's C++ runs without the
# GIL and the loop stays free (the hop costs about 6 µs a query at 256: 1.3x raw instead of 1.25x).
# One call, not chunks on the loop: PECOS's predict has a large fixed cost per call (256 queries
# in chunks of 64 took 1.4x as long as in one call).
INLINE_PREDICT_QUERIES = 64


class Models:
    """The live version of every model name, and the verbs that read or change them."""

    def __init__(self, registry: ModelRegistry, live: LiveModels, sessions: Sessions, limits: Limits,
                 max_nfr: float) -> None:
        self.registry = registry
        self.live = live
        self._sessions = sessions
        self._limits = limits
        self._max_nfr = max_nfr

    async def xmr_predict(self, model: str, queries: Sequence[str], k: int = 10, beam_size: int = 0
                          ) -> tuple[int, XmrModel, Ranked]:
        """Top-k labels per query from the model's live version: (version, that model, its ranked labels)."""
        check_model_name(model, "model")
        if not queries:
            raise InvalidArgument("queries", "is empty")
        if len(queries) > self._limits.max_predict_queries:
            raise InvalidArgument("queries", f"{len(queries)} queries, more than "
                                             f"limits.max_predict_queries={self._limits.max_predict_queries}")
        texts = []
        for i, q in enumerate(queries):
            if len(q) > self._limits.max_query_chars:
                raise InvalidArgument(f"queries[{i}]", f"{len(q)} characters, more than "
                                                       f"limits.max_query_chars={self._limits.max_query_chars}")
            text = normalize(q)
            if not text:
                raise InvalidArgument(f"queries[{i}]", "has no letters or digits")
            texts.append(text)
        if not 0 <= k <= MAX_K:
            raise InvalidArgument("k", f"must be in [1, {MAX_K}], got {k}")
        if not 0 <= beam_size <= MAX_K:
            raise InvalidArgument("beam_size", f"must be in [0, {MAX_K}], got {beam_size}")
        version, m = self.live.get(model)
        if len(texts) <= INLINE_PREDICT_QUERIES:
            # A query costs 0.06-0.4 ms: less than the hop to a worker thread and back.
            return version, m, m.predict_ranked(texts, k or 10, beam_size)
        return version, m, await asyncio.to_thread(m.predict_ranked, texts, k or 10, beam_size)

    async def autocomplete(self, model: str, prefix: str, previous: Sequence[str] = (), session_id: str = "",
                           k: int = 10) -> tuple[int, list[tuple[str, float]]]:
        """Completions of ``prefix`` given the session's previous queries (sent, or kept by session id)."""
        from ltrr_server.autocomplete.model import AutocompleteModel

        check_model_name(model, "model")
        if len(prefix) > self._limits.max_prefix_chars:
            raise InvalidArgument("prefix", f"longer than limits.max_prefix_chars={self._limits.max_prefix_chars}")
        if not prefix.strip() or not normalize(prefix):
            raise InvalidArgument("prefix", "is empty (or has no letters or digits)")
        if not 0 <= k <= MAX_COMPLETIONS:
            raise InvalidArgument("k", f"must be in [1, {MAX_COMPLETIONS}], got {k}")
        history = self._sessions.from_request(previous, session_id)
        version, m = self.live.get(model, AutocompleteModel)
        return version, m.complete(history[-1] if history else "", prefix, k or 10)

    async def versions(self, name: str) -> list[dict[str, Any]]:
        if len(name) > INSIDE_CHARS:
            raise InvalidArgument("name", f"longer than {ID_CHARS} characters")
        return await asyncio.to_thread(self.registry.versions, name)

    async def promote(self, name: str, version: int, force: bool) -> dict[str, Any]:
        """Checks a version against the live one on its held-out pairs, then swaps it in."""
        check_model_name(name, "name")
        if version == 0:
            raise InvalidArgument("version", "is required")
        row = await asyncio.to_thread(self.registry.get, name, version)
        candidate = await asyncio.to_thread(load_model, row["kind"], Path(row["path"]))
        live = self.live.maybe(name, object)
        # Registry reads stay off the event loop, like every other SQL call here.
        versions = await asyncio.to_thread(self.registry.versions, name)
        previous = next((r["version"] for r in versions if r["live"]), 0)
        figures: dict[str, float] = {}
        if isinstance(candidate, XmrModel):
            figures = await asyncio.to_thread(compare, live, candidate, Path(row["path"]))
        elif isinstance(candidate, LambdaMartRanker):
            ranker_live = self.live.maybe(name, LambdaMartRanker)
            figures = await asyncio.to_thread(compare_rankers, ranker_live, candidate, Path(row["path"]))
        nfr = figures.get("negative_flip_rate", 0.0)
        if live is not None and "negative_flip_rate" not in figures and not force:
            # A version the gate cannot measure is not waved through with a flip rate of 0.
            why = ("it has no held-out pairs (a folder registered with `ltrr register`, or trained without any)"
                   if isinstance(candidate, XmrModel) else
                   "it has no held-out pages with an engagement" if isinstance(candidate, LambdaMartRanker) else
                   f"{row['kind']} versions have no held-out check yet")
            raise FailedPrecondition(
                f"model {name!r} v{version} cannot be measured against live v{previous}: {why}; promote it with "
                "force to accept it unmeasured", field="version")
        if live is not None and nfr > self._max_nfr and not force:
            raise FailedPrecondition(
                f"model {name!r} v{version}: negative flip rate {nfr:.4f} against live v{previous} is above "
                f"max_nfr={self._max_nfr} ({_accuracy(figures)}); retrain with congruent training "
                "(ltrr train --congruent 1) or force", field="version")
        await asyncio.to_thread(self.registry.set_live, name, version, figures | {"forced": force})
        self.live.swap(name, version, candidate)
        log.info("model %s: v%d live (was v%d): %s", name, version, previous, figures)
        row = await asyncio.to_thread(self.registry.get, name, version)
        return figures | {"previous_version": previous, "row": row}


def _accuracy(figures: dict[str, float]) -> str:
    if "top1_engaged_new" in figures:
        return (f"engaged item first {figures.get('top1_engaged_live', 0):.4f} -> "
                f"{figures.get('top1_engaged_new', 0):.4f}")
    return f"recall@10 {figures.get('recall_live', 0):.4f} -> {figures.get('recall_new', 0):.4f}"


def compare_rankers(live: LambdaMartRanker | None, candidate: LambdaMartRanker, folder: Path) -> dict[str, float]:
    """The ranker gate's figures on the candidate's held-out pages (``pagelog.held_out``: pages no
    version trains on); none when it has no page with an engagement."""
    path = folder / HELDOUT_FILE
    if not path.exists():
        return {"heldout_pages": 0.0}
    with np.load(path) as data:
        pages = LoggedPages.from_npz(data)
    if not pages.engaged_pages():
        return {"heldout_pages": float(len(pages.groups))}
    return compare_pages(live, candidate, pages)


def check_model_name(name: str, field: str, limit: int = INSIDE_CHARS) -> None:
    """A model's name: a client's at most ID_CHARS, the server's with its tenant (tenancy.py) twice that."""
    if not name:
        raise InvalidArgument(field, "is empty")
    if len(name) > limit:
        raise InvalidArgument(field, f"longer than {ID_CHARS} characters")
