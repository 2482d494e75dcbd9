"""The catalog in memory (columns by dense item position) and in SQL (``catalog_items``).

Every index keys items by their dense position ``idx``: an item keeps its position when it is
updated, and a new item gets the next one, so an ingest touches only what changed.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from ltrr_server.catalog.items import Item
from ltrr_server.log import schema as t

_NOT_ALNUM = re.compile(r"[\W_]+")

# (stage, done, total): long jobs report progress through it.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: silent."""


def normalize(text: str) -> str:
    """Query and name normalization: Unicode NFKC, lower case, letters and digits, single spaces.

    >>> normalize("  Blue   Train (Remastered)! ")
    'blue train remastered'
    """
    # ``\w`` is ``str.isalnum`` plus the underscore, so this keeps exactly the letters and digits
    # (checked over every code point in tests) at about 60% of a per-character loop's cost.
    return _NOT_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


@dataclass
class IngestChanges:
    added: list[int]
    updated: list[int]
    unchanged: int
    # (item id, problem) of items refused as a whole (an embedding of the wrong dimension).
    rejected: list[tuple[str, str]] = field(default_factory=list)


class Catalog:
    """Items by position, with the columns strategies read on the hot path."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.index: dict[str, int] = {}
        self.popularity = np.zeros(0, dtype=np.float64)
        self.created_at = np.zeros(0, dtype=np.float64)
        # Exact normalized names (title, artist, album) -> item type: the entity hint of a query.
        self.names: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def embedding_dim(self) -> int:
        """Dimension of the items' own embeddings (0: none carries one)."""
        for item in self.items:
            if item.embedding is not None:
                return item.embedding_dims
        return 0

    def _refresh_columns(self) -> None:
        self.popularity = np.array([i.popularity for i in self.items], dtype=np.float64)
        self.created_at = np.array([i.created_at for i in self.items], dtype=np.float64)
        self.names = {}
        for item in self.items:
            for key in ("artist", "album", "title"):
                value = item.fields.get(key)
                if value:
                    self.names[normalize(value)] = "artist" if key == "artist" else (item.type or key)

    def apply(self, items: Sequence[Item]) -> IngestChanges:
        """Adds new items and replaces changed ones, in memory. Returns their positions."""
        added: list[int] = []
        updated: list[int] = []
        unchanged = 0
        for item in items:
            pos = self.index.get(item.id)
            if pos is None:
                pos = self.index[item.id] = len(self.items)
                self.items.append(item)
                added.append(pos)
            elif self.items[pos] != item:
                self.items[pos] = item
                updated.append(pos)
            else:
                unchanged += 1
        if added or updated:
            self._refresh_columns()
        return IngestChanges(added, updated, unchanged)

    # ------------------------------------------------------------------ SQL
    @classmethod
    def load(cls, engine: sa.Engine) -> Catalog:
        cat = cls()
        # Equal keys and values as one object each (see ``parse_item``): 160 -> 84 MB for the demo.
        strings: dict[str, str] = {}
        share = strings.setdefault
        with engine.connect() as conn:
            rows = conn.execute(sa.select(t.catalog_items.c.idx, t.catalog_items.c.data, t.catalog_items.c.embedding)
                                .order_by(t.catalog_items.c.idx))
            for idx, data, emb in rows:
                d = json.loads(data)
                item_id, kind = d.pop("id"), d.pop("type", "")
                popularity, created_at = d.pop("popularity", 0.0), d.pop("created_at", 0.0)
                fields = {share(k, k): share(v, v) for k, v in d.items()}
                item = Item(item_id, share(kind, kind), fields, popularity, created_at, emb)
                assert idx == len(cat.items), "catalog positions must be dense"
                cat.index[item.id] = idx
                cat.items.append(item)
        cat._refresh_columns()
        return cat

    def save(self, engine: sa.Engine, positions: Sequence[int], progress: Progress = no_progress,
             chunk: int = 5000) -> None:
        """Writes the items at ``positions`` (insert or replace)."""
        now = time.time()
        todo = sorted(positions)
        with engine.begin() as conn:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                conn.execute(t.catalog_items.delete().where(t.catalog_items.c.idx.in_(part)))
                conn.execute(t.catalog_items.insert(), [
                    {"idx": p, "item_id": self.items[p].id, "data": json.dumps(self.items[p].to_json()),
                     "embedding": self.items[p].embedding,
                     "updated_at": now}
                    for p in part
                ])
                progress("store items", min(start + chunk, len(todo)), len(todo))
