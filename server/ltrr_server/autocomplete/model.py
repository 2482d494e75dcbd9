"""Session-aware autocompletion: input = previous query + typed prefix, labels = past queries.

Features: character 1-3 grams of the prefix anchored at its start (``^`` marks it), and the
previous query's words, TF-IDF, side by side. The model is PECOS XR-Linear over one of three
label indexes (the label tree its beam search walks):

- ``kmeans``: hierarchical k-means over PIFA label embeddings (PECOS's default);
- ``trie``: the label trie, one tree level per prefix character (``trie_depth`` levels);
- ``hybrid``: the trie for the top ``trie_depth`` levels (3 by default), then inside each trie
  node a 16-way k-means tree (leaves of at most ``cluster_size``, 32) over prefix-weighted
  character TF-IDF label embeddings.

Completions always start with the prefix: predictions that do not are dropped, and the most
popular completions of the prefix fill what is left. ``MostPopular`` is that baseline alone.
"""

from __future__ import annotations

import bisect
import copy
import json
import math
import pickle
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ltrr_server.catalog.catalog import Progress, no_progress, normalize
from ltrr_server.errors import FailedPrecondition, InvalidArgument
from ltrr_server.xmr.model import layer_progress, save_xlinear, vectorizer_threads

INDEXES = ("kmeans", "trie", "hybrid")
# Per label, its node at each level of a label tree (a column per level).
Codes = np.ndarray[Any, np.dtype[np.int64]]
MAX_PREFIXES_PER_QUERY = 8


@dataclass(frozen=True)
class AutocompleteParams:
    index: str = "hybrid"
    trie_depth: int = 3
    cluster_size: int = 32
    beam_size: int = 10
    threshold: float = 0.05
    # Typed prefixes each past query is learned at (of lengths 1-8): fewer trains faster.
    prefixes_per_query: int = MAX_PREFIXES_PER_QUERY

    def __post_init__(self) -> None:
        if self.index not in INDEXES:
            raise InvalidArgument("index", f"must be one of {INDEXES}, got {self.index!r}")
        if not 1 <= self.trie_depth <= 16:
            raise InvalidArgument("trie_depth", f"must be in [1, 16], got {self.trie_depth}")
        if not 2 <= self.cluster_size <= 10_000:
            raise InvalidArgument("cluster_size", f"must be in [2, 10000], got {self.cluster_size}")
        if not 1 <= self.beam_size <= 1000:
            raise InvalidArgument("beam_size", f"must be in [1, 1000], got {self.beam_size}")
        if not 1 <= self.prefixes_per_query <= MAX_PREFIXES_PER_QUERY:
            raise InvalidArgument("prefixes_per_query",
                                  f"must be in [1, {MAX_PREFIXES_PER_QUERY}], got {self.prefixes_per_query}")


class MostPopular:
    """The most frequent past queries that start with the prefix.

    >>> mp = MostPopular(["jazz", "jazz", "jazz live", "rock"])
    >>> mp.complete("ja", 5)
    [('jazz', 2.0), ('jazz live', 1.0)]
    """

    def __init__(self, queries: Sequence[str]) -> None:
        counts = Counter(queries)
        self.labels = sorted(counts)
        self.counts = [float(counts[q]) for q in self.labels]
        # Precomputed for short prefixes, where the matching range is widest.
        self._short: dict[str, list[tuple[str, float]]] = {}
        for length in (1, 2):
            groups: dict[str, list[int]] = {}
            for i, q in enumerate(self.labels):
                if len(q) >= length:
                    groups.setdefault(q[:length], []).append(i)
            for prefix, idx in groups.items():
                top = sorted(idx, key=lambda i: -self.counts[i])[:50]
                self._short[prefix] = [(self.labels[i], self.counts[i]) for i in top]

    def complete(self, prefix: str, k: int) -> list[tuple[str, float]]:
        if prefix in self._short and k <= 50:
            return self._short[prefix][:k]
        lo = bisect.bisect_left(self.labels, prefix)
        hi = bisect.bisect_left(self.labels, prefix + "\U0010ffff")
        idx = sorted(range(lo, hi), key=lambda i: -self.counts[i])[:k]
        return [(self.labels[i], self.counts[i]) for i in idx]


def _prefix_weighted(label: str) -> str:
    """A label as text whose earlier characters count more: its prefixes of growing length."""
    return " ".join(label[:n] for n in (1, 2, 3, 5, 8) if n < len(label)) + " " + label


def _tfidf(analyzer: str, ngrams: tuple[int, int]) -> dict[str, Any]:
    # add_one_idf: an n-gram every example has (the ``^`` anchor) keeps weight 1 instead of 0.
    return {"type": "tfidf", "kwargs": {"base_vect_configs": [{
        "ngram_range": list(ngrams), "analyzer": analyzer, "sublinear_tf": True, "add_one_idf": True,
        "max_feature": 0}]}}


def _vectorizer() -> Any:
    from pecos.utils.featurization.text.vectorizers import Vectorizer

    return Vectorizer


class _Features:
    """The prefix's character 1-3 grams (anchored by ``^``) and the previous query's words, TF-IDF.

    PECOS's C++ vectorizer: multithreaded over millions of training prefixes, and about 40 µs
    for one query where scikit-learn's took 600.
    """

    PARTS = ("prefix-vectorizer", "previous-vectorizer")

    def __init__(self, prefix: Any, previous: Any) -> None:
        self.prefix, self.previous = prefix, previous

    @classmethod
    def fit(cls, previous: Sequence[str], prefixes: Sequence[str]) -> _Features:
        v = _vectorizer()
        return cls(v.train(["^" + p for p in prefixes], config=_tfidf("char", (1, 3))),
                   v.train([p or "<none>" for p in previous], config=_tfidf("word", (1, 1))))

    def transform(self, previous: Sequence[str], prefixes: Sequence[str]) -> sp.csr_matrix:
        threads = vectorizer_threads(len(prefixes))
        a = self.prefix.predict(["^" + p for p in prefixes], threads=threads)
        b = self.previous.predict([p or "<none>" for p in previous], threads=threads) * 0.5
        return sp.hstack([a, b], format="csr", dtype=np.float32)

    def save(self, folder: Path) -> None:
        self.prefix.save(str(folder / self.PARTS[0]))
        self.previous.save(str(folder / self.PARTS[1]))

    @classmethod
    def load(cls, folder: Path) -> _Features:
        v = _vectorizer()
        return cls(v.load(str(folder / cls.PARTS[0])), v.load(str(folder / cls.PARTS[1])))


def _trie_codes(labels: Sequence[str], depth: int) -> Codes:
    """Each label's trie node at levels 1..depth (its prefix of that length), as ids per level.

    >>> _trie_codes(["ab", "ac", "b"], 2).tolist()
    [[0, 0], [0, 1], [1, 2]]
    """
    codes = np.zeros((len(labels), depth), dtype=np.int64)
    for d in range(1, depth + 1):
        # A label shorter than d is its own node at every deeper level: a single-child chain.
        _, codes[:, d - 1] = np.unique(np.array([lab[:d] for lab in labels], dtype=object), return_inverse=True)
    return codes


def _chain_from_codes(codes: Codes) -> list[sp.csc_matrix]:
    """A PECOS cluster chain from each label's path (one column per tree level, root excluded).

    A level's node is a distinct path prefix, so every node has at least one label below it.

    >>> [m.shape for m in _chain_from_codes(np.array([[0, 0], [0, 1], [1, 0]]))]
    [(2, 1), (3, 2), (3, 3)]
    """
    chain = []
    parent_of_label = np.zeros(len(codes), dtype=np.int64)
    n_parents = 1
    for level in range(codes.shape[1]):
        _, first, node_of_label = np.unique(codes[:, :level + 1], axis=0, return_index=True, return_inverse=True)
        node_of_label = node_of_label.reshape(-1)
        chain.append(sp.csc_matrix((np.ones(len(first), dtype=np.float32),
                                    (np.arange(len(first)), parent_of_label[first])),
                                   shape=(len(first), n_parents)))
        parent_of_label, n_parents = node_of_label, len(first)
    chain.append(sp.csc_matrix((np.ones(len(codes), dtype=np.float32), (np.arange(len(codes)), parent_of_label)),
                               shape=(len(codes), n_parents)))
    return chain


def _kmeans_codes(emb: sp.csr_matrix, groups: Codes, cluster_size: int, seed: int) -> Codes:
    """Inside each group, PECOS's balanced binary k-means down to leaves of at most ``cluster_size``,
    read as 16-way levels (4 bits each) so each node trains against at most 15 siblings.

    Groups need different depths; a shallower group's code is padded with zeros at the top, which
    gives it single-child nodes there. One flat level of ``size / cluster_size`` clusters per group
    instead made training quadratic in the largest group (hours at a million labels).
    """
    from pecos.xmc import Indexer

    leaf = np.zeros(len(groups), dtype=np.int64)
    bits = 0
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for idx in np.split(order, bounds):
        if len(idx) <= cluster_size:
            continue
        chain = Indexer.gen(emb[idx], indexer_type="hierarchicalkmeans", nr_splits=2, max_leaf_size=cluster_size,
                            seed=seed, threads=-1 if len(idx) > 5000 else 1)
        # Binary splits: leaf j's parent is j >> 1, so the leaf id's bits are its path.
        leaf[idx] = chain[-1].tocsr().indices
        bits = max(bits, int(chain[-1].shape[1]).bit_length() - 1)
    levels = math.ceil(bits / 4)
    if not levels:
        return np.zeros((len(groups), 0), dtype=np.int64)
    digits: Codes = np.stack([(leaf >> (4 * (levels - 1 - j))) & 15 for j in range(levels)], axis=1)
    return digits


def build_chain(labels: Sequence[str], params: AutocompleteParams, x: sp.csr_matrix, y: sp.csc_matrix,
                seed: int = 0) -> Any:
    """The label tree for ``params.index`` as a PECOS cluster chain."""
    from pecos.utils.cluster_util import ClusterChain
    from pecos.xmc import Indexer, LabelEmbeddingFactory

    if params.index == "kmeans":
        feat = LabelEmbeddingFactory.create(y, x, method="pifa")
        return Indexer.gen(feat, indexer_type="hierarchicalkmeans", nr_splits=16,
                           max_leaf_size=min(params.cluster_size, max(2, len(labels) - 1)))
    if params.index == "trie":
        return ClusterChain(_chain_from_codes(_trie_codes(labels, max(params.trie_depth, 6))))
    # Hybrid: the trie's top levels, then inside each trie node k-means over prefix-weighted
    # character TF-IDF embeddings of its labels.
    trie = _trie_codes(labels, params.trie_depth)
    weighted = [_prefix_weighted(lab) for lab in labels]
    emb = _vectorizer().train(weighted, config=_tfidf("char", (1, 3))).predict(weighted)
    kmeans = _kmeans_codes(emb, trie[:, -1], params.cluster_size, seed)
    return ClusterChain(_chain_from_codes(np.hstack([trie, kmeans])))


def training_examples(sessions: Sequence[Sequence[str]], prefixes_per_query: int = MAX_PREFIXES_PER_QUERY,
                      seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(previous query, prefix, query) for every query after the first of a session (the previous
    one is its context) and every first query (no context), at prefix lengths 1..8; with
    ``prefixes_per_query`` below 8, at that many of those lengths drawn at random per query.

    >>> training_examples([["jazz", "jazz live"]])[1][:5]
    ['j', 'ja', 'jaz', 'jazz', 'j']
    >>> len(training_examples([["jazz", "jazz live"]], prefixes_per_query=2)[1])
    4
    """
    rng = random.Random(seed)
    prev, prefixes, targets = [], [], []
    for s in sessions:
        for t, q in enumerate(s):
            lengths = range(1, min(len(q), MAX_PREFIXES_PER_QUERY) + 1)
            if prefixes_per_query < len(lengths):
                lengths = sorted(rng.sample(lengths, prefixes_per_query))  # type: ignore[assignment]
            for n in lengths:
                prev.append(s[t - 1] if t else "")
                prefixes.append(q[:n])
                targets.append(q)
    return prev, prefixes, targets


class AutocompleteModel:
    def __init__(self, features: _Features, model: Any, labels: list[str], popular: MostPopular,
                 meta: dict[str, Any]) -> None:
        self.features, self.model, self.labels, self.popular, self.meta = features, model, labels, popular, meta
        self.beam_size = int(meta.get("beam_size", 20))

    @classmethod
    def train(cls, sessions: Sequence[Sequence[str]], params: AutocompleteParams = AutocompleteParams(),
              progress: Progress = no_progress) -> AutocompleteModel:
        from pecos.xmc.xlinear.model import XLinearModel

        prev, prefixes, targets = training_examples(sessions, params.prefixes_per_query)
        if not targets:
            raise InvalidArgument("sessions", "no queries to learn from")
        t0 = time.perf_counter()
        labels = sorted(set(targets))
        index = {q: i for i, q in enumerate(labels)}
        progress("features", 0, 3)
        feats = _Features.fit(prev, prefixes)
        x = feats.transform(prev, prefixes)
        y = sp.csr_matrix((np.ones(len(targets), dtype=np.float32),
                           (np.arange(len(targets)), [index[q] for q in targets])),
                          shape=(len(targets), len(labels))).tocsc()
        progress(f"{params.index} label index", 1, 3)
        chain = build_chain(labels, params, x, y)
        progress("train XR-Linear", 2, 3)
        with layer_progress(progress, 2, 3):
            model = XLinearModel.train(x, y, C=copy.deepcopy(chain), threshold=params.threshold)
        progress("done", 3, 3)
        meta = asdict(params) | {"labels": len(labels), "examples": len(targets),
                                 "train_seconds": round(time.perf_counter() - t0, 2)}
        return cls(feats, model, labels, MostPopular([s[t] for s in sessions for t in range(len(s))]), meta)

    def save(self, folder: Path) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_xlinear(self.model, tmp / "xlinear")
        self.features.save(tmp)
        (tmp / "parts.pkl").write_bytes(pickle.dumps((self.labels, self.popular)))
        (tmp / "meta.json").write_text(json.dumps(self.meta | {"kind": "autocomplete"}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> AutocompleteModel:
        from pecos.xmc.xlinear.model import XLinearModel

        for part in ("xlinear", "parts.pkl", "meta.json", *_Features.PARTS):
            if not (folder / part).exists():
                raise FailedPrecondition(f"model folder {folder}: {part} is missing", field="path")
        try:
            # Written by ltrr itself into its own model directory.
            labels, popular = pickle.loads((folder / "parts.pkl").read_bytes())  # noqa: S301
            features = _Features.load(folder)
            meta = json.loads((folder / "meta.json").read_text())
            model = XLinearModel.load(str(folder / "xlinear"), is_predict_only=True)
        except Exception as exc:
            raise FailedPrecondition(f"model folder {folder}: cannot load: {type(exc).__name__}: {exc}",
                                     field="path") from exc
        return cls(features, model, labels, popular, meta)

    def complete(self, previous: str, prefix: str, k: int = 10) -> list[tuple[str, float]]:
        """Up to ``k`` completions of ``prefix``, best first; every one starts with the prefix."""
        prefix = normalize(prefix) + (" " if prefix.endswith(" ") and prefix.strip() else "")
        if not prefix:
            raise InvalidArgument("prefix", "is empty")
        x = self.features.transform([normalize(previous)], [prefix])
        pred = self.model.predict(x, beam_size=self.beam_size, only_topk=max(4 * k, 20), threads=1).tocsr()
        order = np.argsort(-pred.data)
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        for j in order:
            label = self.labels[int(pred.indices[j])]
            if label.startswith(prefix) and label not in seen:
                out.append((label, float(pred.data[j])))
                seen.add(label)
                if len(out) == k:
                    return out
        for label, _ in self.popular.complete(prefix, k + len(out)):
            if label not in seen:
                out.append((label, 0.0))
                seen.add(label)
                if len(out) == k:
                    break
        return out
