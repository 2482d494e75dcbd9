"""The built-in text encoder: no network, no model download.

Character n-gram and word TF-IDF, reduced by truncated SVD. When the catalog's items carry
their own embeddings, a ridge map from the reduced TF-IDF space onto them is fitted as well,
so a query without an embedding lands in the items' space.

>>> enc = TextEncoder.fit(["blue train jazz", "kind of blue", "giant steps jazz", "love supreme"] * 5, dims=3)
>>> enc.encode(["blue jazz"]).shape
(1, 3)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

Matrix = np.ndarray[Any, np.dtype[np.float32]]
_MIN_DF_FROM = 20


def _unit(m: np.ndarray[Any, Any]) -> Matrix:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    out: Matrix = (m / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def _output_weights(svd: TruncatedSVD, projection: Matrix | None) -> Matrix:
    """The SVD's components, then the projection if any, as one contiguous float32 matrix."""
    w = svd.components_.T
    return np.ascontiguousarray(w @ projection if projection is not None else w, dtype=np.float32)


class TextEncoder:
    """The two vectorizers and one matrix from their TF-IDF straight to the output space.

    The SVD's own transform multiplies by a transposed view, which costs a copy of it per call
    (8 ms against 0.7 ms a query on the demo catalog); and once the matrix is made, the SVD's
    components (15 MB for the demo catalog) are not needed, so they are not kept.
    """

    def __init__(self, chars: TfidfVectorizer, words: TfidfVectorizer, weights: Matrix) -> None:
        self.chars, self.words = chars, words
        self._weights = weights

    def __setstate__(self, state: dict[str, object]) -> None:
        if "svd" in state:  # pickled by an earlier version, with the SVD and the projection
            svd, projection = state.pop("svd"), state.pop("projection")
            if "_weights" not in state:
                state["_weights"] = _output_weights(svd, projection)  # type: ignore[arg-type]
        self.__dict__.update(state)

    @property
    def dims(self) -> int:
        return int(self._weights.shape[1])

    @classmethod
    def fit(cls, texts: list[str], dims: int = 64, targets: Matrix | None = None, seed: int = 0) -> TextEncoder:
        """Fits on item texts; with ``targets`` (the items' embeddings), maps onto their space."""
        # An n-gram in one item only is noise in a catalog, and all there is in a catalog of one.
        min_df = 2 if len(texts) >= _MIN_DF_FROM else 1
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), min_df=min_df, max_features=200_000,
                                sublinear_tf=True, dtype=np.float32)
        words = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=1, max_features=200_000,
                                sublinear_tf=True, dtype=np.float32, token_pattern=r"(?u)\b\w+\b")
        x = sparse.hstack([chars.fit_transform(texts), words.fit_transform(texts)]).tocsr()
        k = max(2, min(dims if targets is None else max(dims, 2 * targets.shape[1]), x.shape[1] - 1,
                       x.shape[0] - 1))
        svd = TruncatedSVD(n_components=k, random_state=seed, algorithm="randomized", n_iter=4)
        with np.errstate(divide="ignore", invalid="ignore"):  # explained variance of a one-item catalog
            z = svd.fit_transform(x)
        projection = None
        if targets is not None:
            # Ridge regression in the reduced space: (Z'Z + a I)^-1 Z'Y.
            k = z.shape[1]  # fewer than asked for from a catalog of one or two items
            a = 1e-2 * float(np.trace(z.T @ z)) / k + 1e-12
            projection = np.linalg.solve(z.T @ z + a * np.eye(k), z.T @ targets).astype(np.float32)
        return cls(chars, words, _output_weights(svd, projection))

    def encode(self, texts: list[str]) -> Matrix:
        x = sparse.hstack([self.chars.transform(texts), self.words.transform(texts)], format="csr")
        return _unit(np.asarray(x @ self._weights))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(self))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TextEncoder:
        # Written by this server into its own data directory.
        obj = pickle.loads(path.read_bytes())  # noqa: S301
        assert isinstance(obj, cls)
        return obj
