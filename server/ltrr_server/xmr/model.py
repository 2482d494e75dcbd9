"""An XR-Linear model as ltrr serves it: PECOS's vectorizer and model folder, plus the label ids.

Features are PECOS TF-IDF over word 1-2 grams and character trigrams together; XR-Linear
matches through a B-ary label tree (hierarchical k-means over PIFA label embeddings, branching
``nr_splits``), prunes weights under ``threshold`` and predicts by beam search.

A model folder holds ``xlinear/`` (a standard PECOS XLinearModel folder), ``vectorizer/`` (a PECOS
Vectorizer folder), ``labels.json`` (label index -> item id) and ``meta.json``. A model trained
elsewhere with PECOS's own tools is registered by giving those same parts.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ltrr_server.catalog.catalog import Progress, no_progress
from ltrr_server.errors import FailedPrecondition, InvalidArgument

_score = itemgetter(0)
# Above this many rows a prediction is sorted in one numpy call rather than row by row in Python.
_NUMPY_SORT_ROWS = 8


def vectorizer_threads(n_texts: int) -> int:
    """Threads for a PECOS vectorizer call on ``n_texts`` texts: one below 1000, where a team of
    threads costs more than it saves (and on a busy server each call waits for its slowest thread)."""
    return 1 if n_texts < 1000 else -1

VECTORIZER_CONFIG: dict[str, Any] = {"type": "tfidf", "kwargs": {"base_vect_configs": [
    {"ngram_range": [1, 2], "analyzer": "word", "max_feature": 500_000},
    {"ngram_range": [3, 3], "analyzer": "char_wb", "max_feature": 500_000},
]}}


@dataclass(frozen=True)
class XmrTrainParams:
    """Training options; errors name the field."""

    beam_size: int = 10
    threshold: float = 0.1
    nr_splits: int = 16
    max_leaf_size: int = 100
    # Positive-congruent training by focal distillation (``train.distillation_targets``): the weight
    # of the live model's top 10 as extra targets of the queries it gets right (0: plain training).
    # Lowers the negative flip rate against the live model.
    congruent: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.beam_size <= 1000:
            raise InvalidArgument("beam_size", f"must be in [1, 1000], got {self.beam_size}")
        if not 0.0 <= self.threshold < 1.0:
            raise InvalidArgument("threshold", f"must be in [0, 1), got {self.threshold}")
        if not 2 <= self.nr_splits <= 1024:
            raise InvalidArgument("nr_splits", f"must be in [2, 1024], got {self.nr_splits}")
        if not 2 <= self.max_leaf_size <= 100_000:
            raise InvalidArgument("max_leaf_size", f"must be in [2, 100000], got {self.max_leaf_size}")
        if not 0.0 <= self.congruent <= 100.0:
            raise InvalidArgument("congruent", f"must be in [0, 100], got {self.congruent}")


def _pecos() -> tuple[Any, Any, Any, Any]:
    from pecos.utils.featurization.text.vectorizers import Vectorizer
    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel

    return Vectorizer, Indexer, LabelEmbeddingFactory, XLinearModel


class _LayerProgress(logging.Handler):
    def __init__(self, progress: Progress, step: int, total: int) -> None:
        super().__init__(logging.INFO)
        self.progress, self.step, self.total = progress, step, total

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"Training Layer (\d+) of (\d+)", record.getMessage())
        if m:
            self.progress(f"train XR-Linear: label-tree layer {int(m[1]) + 1} of {m[2]}", self.step, self.total)


@contextmanager
def layer_progress(progress: Progress, step: int, total: int) -> Iterator[None]:
    """Passes PECOS's log line for each label-tree layer it starts training on as progress: at a
    million labels one layer can take many minutes."""
    logger = logging.getLogger("pecos.xmc.base")
    handler, level = _LayerProgress(progress, step, total), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def save_xlinear(model: Any, folder: Path) -> None:
    """Saves an XR-Linear model in PECOS's memory-mapped format.

    Loading maps the files instead of parsing and converting npz arrays, and the pages are shared
    between processes that load the same version. ``XLinearModel.load(..., is_predict_only=True)``
    reads both this and the npz format, which folders trained elsewhere with PECOS's own tools use.
    """
    XLinearModel = _pecos()[3]
    npz = folder.with_name(folder.name + ".npz")
    if npz.exists():
        shutil.rmtree(npz)
    model.save(str(npz))
    XLinearModel.compile_mmap_model(str(npz), str(folder))
    shutil.rmtree(npz)


class XmrModel:
    """A loaded model: ``predict`` maps query texts to (item id, score) lists, best first."""

    def __init__(self, vectorizer: Any, model: Any, labels: list[str], meta: dict[str, Any]) -> None:
        self.vectorizer = vectorizer
        self.model = model
        self.labels = labels
        self.meta = meta
        self.beam_size = int(meta.get("beam_size", 10))

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, queries: Sequence[str], item_ids: Sequence[str], params: XmrTrainParams = XmrTrainParams(),
              distill: Sequence[Sequence[tuple[str, float]]] | None = None,
              progress: Progress = no_progress) -> XmrModel:
        """Trains on (query, item id) pairs. ``distill``, per pair, holds extra targets with their
        weights relative to the pair's own (PECOS's relevance matrix, as cost-sensitive positives):
        positive-congruent training passes the live model's answers there."""
        if len(queries) != len(item_ids):
            raise InvalidArgument("pairs", "queries and item ids differ in length")
        if not queries:
            raise InvalidArgument("pairs", "no training pairs")
        if distill is not None and len(distill) != len(queries):
            raise InvalidArgument("distill", "one list of targets per pair is needed")
        Vectorizer, Indexer, LabelEmbeddingFactory, XLinearModel = _pecos()
        extra = distill or ()
        labels = sorted(set(item_ids).union(label for targets in extra for label, _ in targets))
        index = {label: i for i, label in enumerate(labels)}
        t0 = time.perf_counter()
        progress("vectorize", 0, 4)
        # PECOS fills its defaults into the config it is given: hand it a copy.
        vectorizer = Vectorizer.train(list(queries), config=copy.deepcopy(VECTORIZER_CONFIG))
        x = vectorizer.predict(list(queries)).astype(np.float32)
        n, shape = len(item_ids), (len(item_ids), len(labels))
        own = [index[i] for i in item_ids]
        y = sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), own)), shape=shape).tocsc()
        relevance = None
        if distill is not None:
            rows, cols, weights = list(range(n)), list(own), [1.0] * n
            for i, targets in enumerate(distill):
                for label, w in targets:
                    if label != item_ids[i]:
                        rows.append(i)
                        cols.append(index[label])
                        weights.append(w)
            relevance = sp.csc_matrix((np.asarray(weights, dtype=np.float32), (rows, cols)), shape=shape)
            relevance.sum_duplicates()
        progress("cluster labels", 1, 4)
        # The label tree is clustered on the pairs' own labels: the extra targets only weigh the training.
        label_feat = LabelEmbeddingFactory.create(y, x, method="pifa")
        leaf = min(params.max_leaf_size, max(2, len(labels) - 1))
        chain = Indexer.gen(label_feat, indexer_type="hierarchicalkmeans", nr_splits=params.nr_splits,
                            max_leaf_size=leaf)
        progress("train XR-Linear", 2, 4)
        with layer_progress(progress, 2, 4):
            if relevance is None:
                model = XLinearModel.train(x, y, C=chain, threshold=params.threshold)
            else:
                # Every target a positive, weighted by its relevance; "induce" carries the weights up
                # the label tree. Without them (all extra targets full positives) recall@10 fell from
                # 0.52 to 0.30 on the music world.
                targets = relevance.copy()
                targets.data[:] = 1.0
                model = XLinearModel.train(x, targets, C=chain, R=relevance, threshold=params.threshold,
                                           rel_mode="induce", rel_norm="no-norm")
        progress("done", 4, 4)
        meta = asdict(params) | {"pairs": len(queries), "labels": len(labels), "features": int(x.shape[1]),
                                 "train_seconds": round(time.perf_counter() - t0, 2)}
        return cls(vectorizer, model, labels, meta)

    # ------------------------------------------------------------------ files
    def save(self, folder: Path) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.vectorizer.save(str(tmp / "vectorizer"))
        save_xlinear(self.model, tmp / "xlinear")
        (tmp / "labels.json").write_text(json.dumps(self.labels))
        (tmp / "meta.json").write_text(json.dumps(self.meta))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> XmrModel:
        """Loads for prediction only (PECOS's C++ predict-only model). Raises FailedPrecondition
        naming what is missing or unreadable."""
        Vectorizer, _, _, XLinearModel = _pecos()
        for part in ("vectorizer", "xlinear", "labels.json"):
            if not (folder / part).exists():
                raise FailedPrecondition(f"model folder {folder}: {part} is missing", field="path")
        try:
            labels = json.loads((folder / "labels.json").read_text())
            meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
            vectorizer = Vectorizer.load(str(folder / "vectorizer"))
            model = XLinearModel.load(str(folder / "xlinear"), is_predict_only=True)
        except Exception as exc:  # PECOS raises many kinds on a corrupt folder
            raise FailedPrecondition(f"model folder {folder}: cannot load: {type(exc).__name__}: {exc}",
                                     field="path") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise FailedPrecondition(f"model folder {folder}: labels.json must be a list of item ids", field="path")
        n_out = int(model.nr_labels) if hasattr(model, "nr_labels") else len(labels)
        if n_out != len(labels):
            raise FailedPrecondition(f"model folder {folder}: the model has {n_out} labels, labels.json "
                                     f"{len(labels)}", field="path")
        return cls(vectorizer, model, labels, meta)

    # ------------------------------------------------------------------ inference
    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        x = self.vectorizer.predict(list(texts), threads=vectorizer_threads(len(texts)))
        return x if x.dtype == np.float32 else x.astype(np.float32)  # a copy costs ~30 µs a query

    def predict(self, texts: Sequence[str], k: int = 10, beam_size: int = 0, threads: int = 1
                ) -> list[list[tuple[str, float]]]:
        """Top ``k`` labels per text as (item id, score), best first (``threads``: -1 for every core,
        for batches offline)."""
        r, labels = self.predict_ranked(texts, k, beam_size, threads), self.labels
        return [[(labels[j], v) for v, j in zip(r.scores[a:b], r.positions[a:b], strict=True)]
                for a, b in zip(r.bounds, r.bounds[1:], strict=False)]

    def predict_ranked(self, texts: Sequence[str], k: int = 10, beam_size: int = 0, threads: int = 1) -> Ranked:
        """Top ``k`` labels per text as label positions in ``labels`` and scores, best first."""
        if not texts:
            return Ranked([], [], [0])
        pred = self.model.predict(self.features(texts), beam_size=beam_size or self.beam_size, only_topk=k,
                                  threads=threads).tocsr()
        return Ranked.of(pred)


@dataclass(frozen=True, slots=True)
class Ranked:
    """Predictions as flat lists: text ``i``'s labels are ``positions[bounds[i]:bounds[i + 1]]``
    (indexes into the model's ``labels``), with their ``scores``, best first.

    >>> pred = sp.csr_matrix(np.array([[0.2, 0.0, 0.7], [0.0, 0.0, 0.0], [0.5, 0.5, 0.9]], dtype=np.float32))
    >>> r = Ranked.of(pred)
    >>> r.positions, [round(s, 1) for s in r.scores], r.bounds
    ([2, 0, 2, 0, 1], [0.7, 0.2, 0.9, 0.5, 0.5], [0, 2, 2, 5])
    """

    positions: list[int]
    scores: list[float]
    bounds: list[int]

    @classmethod
    def of(cls, pred: sp.csr_matrix) -> Ranked:
        """Sorts each row of a sparse prediction by score, high to low; equal scores keep PECOS's order."""
        data, cols, bounds = pred.data, pred.indices, pred.indptr
        n = len(bounds) - 1
        if n > _NUMPY_SORT_ROWS:
            # One stable sort of the whole batch, by row, then by score descending.
            order = np.lexsort((-data, np.repeat(np.arange(n), np.diff(bounds))))
            return cls(cols[order].tolist(), data[order].tolist(), bounds.tolist())
        # Few rows: sorted in Python, which is ~30 µs faster for one row than numpy's per-call costs.
        scores, positions, bounds_list = data.tolist(), cols.tolist(), bounds.tolist()
        out_p: list[int] = []
        out_s: list[float] = []
        for a, b in zip(bounds_list, bounds_list[1:], strict=False):
            for v, j in sorted(zip(scores[a:b], positions[a:b], strict=True), key=_score, reverse=True):
                out_s.append(v)
                out_p.append(j)
        return cls(out_p, out_s, bounds_list)
