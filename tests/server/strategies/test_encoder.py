"""The built-in text encoder: what it keeps, and encoders saved by earlier versions."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from ltrr_server.strategies.encoder import TextEncoder

TEXTS = ["blue train jazz", "kind of blue", "giant steps jazz", "a love supreme", "mellow evening piano",
         "dark indie artist", "moody indie album", "upbeat pop single"] * 4


def test_keeps_no_svd_and_encodes_unit_vectors_of_its_dims(tmp_path: Path) -> None:
    enc = TextEncoder.fit(TEXTS, dims=4)
    assert set(vars(enc)) == {"chars", "words", "_weights"}
    enc.save(tmp_path / "e.pkl")
    again = TextEncoder.load(tmp_path / "e.pkl")
    out = again.encode(["blue jazz", "indie"])
    assert out.shape == (2, again.dims) == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out, enc.encode(["blue jazz", "indie"]))


def test_an_encoder_saved_with_its_svd_loads_and_encodes_as_before(tmp_path: Path) -> None:
    """Data directories written before the SVD was dropped hold the SVD and the projection."""
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True, dtype=np.float32)
    words = TfidfVectorizer(analyzer="word", sublinear_tf=True, dtype=np.float32)
    x = sparse.hstack([chars.fit_transform(TEXTS), words.fit_transform(TEXTS)]).tocsr()
    svd = TruncatedSVD(n_components=6, random_state=0).fit(x)
    projection = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    expected = x[:2] @ svd.components_.T @ projection
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    for with_weights in (False, True):
        old = TextEncoder.__new__(TextEncoder)
        old.__dict__.update(chars=chars, words=words, svd=svd, projection=projection)
        if with_weights:
            old.__dict__["_weights"] = np.ascontiguousarray(svd.components_.T @ projection, dtype=np.float32)
        (tmp_path / "old.pkl").write_bytes(pickle.dumps(old))
        enc = TextEncoder.load(tmp_path / "old.pkl")
        assert set(vars(enc)) == {"chars", "words", "_weights"} and enc.dims == 3
        np.testing.assert_allclose(enc.encode(TEXTS[:2]), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("texts", [["café"], ["a b", "c d"], ["blue train", "kind of blue", "giant steps"]])
@pytest.mark.parametrize("targets", [False, True])
def test_a_catalog_of_one_two_or_three_items_fits(texts: list[str], targets: bool) -> None:
    # Before: "max_df corresponds to < documents than min_df" for one item, "no terms remain" for two.
    emb = np.eye(len(texts), 4, dtype=np.float32) + 0.1 if targets else None
    enc = TextEncoder.fit(texts, targets=emb)
    out = enc.encode(texts)
    assert out.shape == (len(texts), enc.dims) and np.isfinite(out).all()
    if targets:
        assert enc.dims == 4
