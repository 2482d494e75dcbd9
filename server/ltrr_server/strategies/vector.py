"""``vector``: approximate nearest neighbours (usearch HNSW, cosine) over item embeddings.

Items use their own embeddings when the catalog has them, else the built-in encoder's. The
query embedding comes in the request, or from the encoder. ``min_similarity`` drops hits
below a cosine similarity threshold.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np

# PECOS's C++ library must be loaded before usearch's, which carries its own static C++ runtime:
# loaded the other way round, PECOS's model files come out cut short (a ``param.json`` ending at
# ``"bias": ``) and the model never loads.
import pecos.core  # noqa: F401, I001
from usearch.index import Index

from ltrr_server.bounds import F32_MAX, magnitude_problem
from ltrr_server.catalog.catalog import Catalog, Progress
from ltrr_server.errors import InvalidArgument
from ltrr_server.strategies.base import Hit, Params, Query, StrategyEnv, register
from ltrr_server.strategies.encoder import TextEncoder

_ENCODER_SAMPLE = 20_000


class VectorStrategy:
    kind = "vector"

    def __init__(self, name: str, params: Params, env: StrategyEnv) -> None:
        self.name = name
        self.min_similarity = params.number("min_similarity", -1.0, -1.0, 1.0)
        self.encoder_dims = int(params.number("encoder_dims", 64, 2, 1024))
        self.dir = env.data_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.encoder: TextEncoder | None = None
        self._index: Index | None = None
        enc_path, idx_path = self.dir / "encoder.pkl", self.dir / "index.usearch"
        if enc_path.exists() and idx_path.exists():
            self.encoder = TextEncoder.load(enc_path)
            self._index = Index.restore(str(idx_path))

    def indexed(self) -> int:
        """Items in the index (compared with the catalog at start)."""
        return len(self._index) if self._index is not None else 0

    @property
    def dims(self) -> int:
        return int(self._index.ndim) if self._index is not None else 0

    def check_embedding(self, values: list[float] | tuple[float, ...], field: str) -> np.ndarray[Any, Any]:
        """A caller's query embedding as a unit vector; errors name the field."""
        if self._index is None:
            raise InvalidArgument(field, "the vector index is empty: ingest a catalog first")
        if len(values) != self.dims:
            raise InvalidArgument(field, f"expected {self.dims} dimensions, got {len(values)}")
        as_given = np.asarray(values, dtype=np.float64)
        bad = np.flatnonzero(~(np.abs(as_given) <= F32_MAX))  # NaN compares false
        if bad.size:
            raise InvalidArgument(f"{field}[{int(bad[0])}]", magnitude_problem(float(as_given[bad[0]]), F32_MAX))
        norm = float(np.linalg.norm(as_given))
        if norm == 0.0:
            raise InvalidArgument(field, "is all zeros")
        return (as_given / norm).astype(np.float32)

    def index(self, catalog: Catalog, positions: list[int], progress: Progress) -> None:
        dim = catalog.embedding_dim
        if self.encoder is None:
            rng = random.Random(0)
            sample = list(range(len(catalog)))
            if len(sample) > _ENCODER_SAMPLE:
                sample = rng.sample(sample, _ENCODER_SAMPLE)
            progress(f"fit {self.name} encoder", 0, 1)
            items = catalog.read(sample)
            texts = [item.text() for item in items]
            targets = None
            if dim:
                with_emb = [item for item in items if item.embedding is not None]
                texts = [item.text() for item in with_emb]
                targets = np.stack([item.vector() for item in with_emb])
            self.encoder = TextEncoder.fit(texts, dims=self.encoder_dims, targets=targets)
            progress(f"fit {self.name} encoder", 1, 1)
        # Half precision: a cosine between unit vectors loses nothing a ranking notices, and the
        # index of the 100k demo items takes 6 MB less (indexes made before stay f32).
        index = self._index if self._index is not None else Index(ndim=self.encoder.dims, metric="cos", dtype="f16")
        total = len(positions)
        for start in range(0, total, 5000):
            part = positions[start:start + 5000]
            vecs = np.zeros((len(part), index.ndim), dtype=np.float32)
            to_encode = []
            items = catalog.read(part)
            for row, item in enumerate(items):
                if item.embedding_dims == index.ndim:
                    vecs[row] = item.vector()
                else:
                    to_encode.append(row)
            if to_encode:
                vecs[to_encode] = self.encoder.encode([items[r].text() for r in to_encode])
            keys = np.asarray(part, dtype=np.uint64)
            present = [k for k in part if k in index]
            if present:
                index.remove(np.asarray(present, dtype=np.uint64))
            index.add(keys, vecs, threads=2)
            progress(f"index {self.name}", min(start + 5000, total), total)
        self.encoder.save(self.dir / "encoder.pkl")
        index.save(str(self.dir / "index.usearch"))
        with self._lock:
            self._index = index

    def retrieve(self, query: Query, budget: int) -> list[Hit]:
        index, encoder = self._index, self.encoder
        if index is None or encoder is None or budget <= 0:
            return []
        vec = query.embedding if query.embedding is not None else encoder.encode([query.normalized])[0]
        matches = index.search(vec, budget)
        out = []
        for key, dist in zip(matches.keys.tolist(), matches.distances.tolist(), strict=True):
            sim = 1.0 - float(dist)
            if sim >= self.min_similarity:
                out.append((int(key), sim))
        return out


@register("vector")
def _create(name: str, params: Params, env: StrategyEnv) -> VectorStrategy:
    return VectorStrategy(name, params, env)
