"""``lexical``: BM25 over several fields with per-field boosts (tantivy), and a popularity prior.

The index lives in ``<data_dir>/<name>/``; an ingest deletes and re-adds only changed items.
The prior adds ``popularity_prior * log1p(popularity)`` to the BM25 score of the top
``2 * budget`` hits, so among equally good matches the popular ones come first.
"""

from __future__ import annotations

import shutil
import threading
from array import array
from operator import itemgetter
from typing import cast

import numpy as np
import tantivy

from ltrr_server.catalog.catalog import Catalog, Progress
from ltrr_server.catalog.items import TEXT_FIELDS
from ltrr_server.errors import InvalidArgument
from ltrr_server.strategies.base import Hit, Params, Query, StrategyEnv, register

_DEFAULT_BOOSTS = {"title": 3.0, "artist": 2.0, "album": 1.5, "genre": 1.0, "mood": 1.0, "text": 1.0, "extra": 0.5}
_FIELDS = (*TEXT_FIELDS, "extra")
_MAX_TOKENS = 32


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    # i64, not u64: tantivy-py turns a Python int into an i64 term when deleting by term.
    sb.add_integer_field("idx", stored=True, indexed=True, fast=True)
    for f in _FIELDS:
        sb.add_text_field(f, stored=False)
    sb.add_float_field("popularity", stored=False, fast=True)
    return sb.build()


class LexicalStrategy:
    kind = "lexical"

    def __init__(self, name: str, params: Params, env: StrategyEnv) -> None:
        self.name = name
        boosts = params.mapping("field_boosts", _DEFAULT_BOOSTS)
        for f in boosts:
            if f not in _FIELDS:
                raise_unknown_field(params.prefix, f)
        self.boosts = {f: boosts.get(f, _DEFAULT_BOOSTS[f]) for f in _FIELDS}
        self.popularity_prior = params.number("popularity_prior", 0.3, 0.0, 100.0)
        self.path = env.data_dir / name
        self._lock = threading.Lock()
        schema = _schema()
        if self.path.exists() and tantivy.Index.exists(str(self.path)):
            self._index = tantivy.Index(schema, path=str(self.path), reuse=True)
        else:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
            self._index = tantivy.Index(schema, path=str(self.path))
        self._fields = [f for f in _FIELDS if self.boosts[f] > 0]
        self._searcher = self._index.searcher()
        self._prior = self._priors(env.catalog)

    def _priors(self, catalog: Catalog) -> array[float]:
        """Per item position, what the popularity prior adds to its BM25 score. An ``array``: indexed
        per hit it gives Python floats as fast as a list, in 8 bytes an item instead of 32."""
        return array("d", (self.popularity_prior * np.log1p(np.maximum(catalog.popularity, 0.0))).tobytes())

    @property
    def num_docs(self) -> int:
        return int(self._searcher.num_docs)

    def indexed(self) -> int:
        """Items in the index (compared with the catalog at start)."""
        return self.num_docs

    def index(self, catalog: Catalog, positions: list[int], progress: Progress) -> None:
        writer = self._index.writer(heap_size=128_000_000, num_threads=1)
        total = len(positions)
        # Positions are dense: one below the number of indexed items is an update (delete first).
        indexed = self.num_docs
        for n, (pos, item) in enumerate(zip(positions, catalog.iter_items(positions), strict=True), 1):
            if pos < indexed:
                writer.delete_documents_by_term("idx", pos)
            doc = tantivy.Document()
            doc.add_integer("idx", pos)
            extra = []
            for key, value in item.fields.items():
                if key in TEXT_FIELDS:
                    doc.add_text(key, value)
                else:
                    extra.append(value)
            if extra:
                doc.add_text("extra", " ".join(extra))
            doc.add_float("popularity", float(item.popularity))
            writer.add_document(doc)
            if n % 5000 == 0 or n == total:
                progress(f"index {self.name}", n, total)
        writer.commit()
        writer.wait_merging_threads()
        self._index.reload()
        with self._lock:
            self._prior = self._priors(catalog)
            self._searcher = self._index.searcher()

    def retrieve(self, query: Query, budget: int) -> list[Hit]:
        tokens = query.tokens[:_MAX_TOKENS]
        if not tokens or budget <= 0:
            return []
        # Tokens are letters and digits only, so the query parser sees no syntax.
        q = self._index.parse_query(" ".join(tokens), self._fields, field_boosts=self.boosts)
        searcher = self._searcher
        limit = budget * 2 if self.popularity_prior > 0 else budget
        hits = searcher.search(q, limit).hits
        if not hits:
            return []
        addresses = [a for _, a in hits]
        positions = cast(list[int], searcher.fast_field_values("idx", addresses))  # an i64 field
        if self.popularity_prior > 0:
            prior = self._prior
            scored = [(p, s + prior[p]) for (s, _), p in zip(hits, positions, strict=True) if p is not None]
            scored.sort(key=itemgetter(1), reverse=True)
            return scored[:budget]
        return [(p, float(s)) for (s, _), p in zip(hits, positions, strict=True) if p is not None]


def raise_unknown_field(prefix: str, field: str) -> None:
    raise InvalidArgument(f"{prefix}.field_boosts.{field}", f"unknown field; known: {', '.join(_FIELDS)}")


@register("lexical")
def _create(name: str, params: Params, env: StrategyEnv) -> LexicalStrategy:
    return LexicalStrategy(name, params, env)
