"""The catalog in memory (columns by dense item position) and in SQL (``catalog_items``).

Every index keys items by their dense position ``idx``: an item keeps its position when it is
updated, and a new item gets the next one, so an ingest touches only what changed.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import overload

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


class Names:
    """Exact normalized item names -> item type, kept as 64-bit string hashes in sorted arrays.

    The entity hint of a query: a dict of the demo's 89k names took 8.6 MB of the server's memory,
    these arrays take 1. A query that is no name could only match by a 64-bit hash collision.

    >>> names = Names()
    >>> names.update([("blue train", "song"), ("miles davis", "artist"), ("blue train", "album")])
    >>> names.get("blue train"), names.get("kind of blue", "none"), len(names)
    ('album', 'none', 2)
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.int64)
        self._codes = np.zeros(0, dtype=np.uint32)
        self._types: list[str] = []
        self._type_codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Names):
            return NotImplemented
        return (np.array_equal(self._keys, other._keys)
                and [self._types[c] for c in self._codes] == [other._types[c] for c in other._codes])

    def update(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Adds (name, type) pairs in one go; a name already there takes the later type, as in a dict."""
        keys: list[int] = []
        codes: list[int] = []
        for name, kind in pairs:
            code = self._type_codes.get(kind)
            if code is None:
                code = self._type_codes[kind] = len(self._types)
                self._types.append(kind)
            keys.append(hash(name))  # the process's string hash: these arrays live and die with it
            codes.append(code)
        if not keys:
            return
        all_keys = np.concatenate([self._keys, np.array(keys, dtype=np.int64)])
        all_codes = np.concatenate([self._codes, np.array(codes, dtype=np.uint32)])
        order = np.argsort(all_keys, kind="stable")
        all_keys, all_codes = all_keys[order], all_codes[order]
        last = np.ones(len(all_keys), dtype=bool)
        last[:-1] = all_keys[1:] != all_keys[:-1]  # of equal keys, the latest added
        self._keys, self._codes = all_keys[last], all_codes[last]

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        key = hash(name)
        i = int(np.searchsorted(self._keys, key))
        if i < len(self._keys) and int(self._keys[i]) == key:
            return self._types[int(self._codes[i])]
        return default


class Catalog:
    """Items by position: whole in SQL (``catalog_items``), in memory only what queries read.

    A query needs an item's id by position and back, its popularity and age, and the exact item
    names (the entity hint); only indexing reads whole items, and it reads them from SQL
    (``read``). Keeping every item in memory cost 84 MB for the demo's 100k items; these
    columns cost 21.

    >>> from ltrr_server.log import db
    >>> engine = db.create_engine("sqlite://"); db.migrate(engine)
    >>> catalog = Catalog(engine)
    >>> changes = catalog.apply([Item("a", "song", {"title": "Blue Train"}), Item("b", popularity=3.0)])
    >>> changes.added, catalog.ids, catalog.names.get("blue train")
    ([0, 1], ['a', 'b'], 'song')
    >>> catalog.apply([Item("b", popularity=5.0), Item("a", "song", {"title": "Blue Train"})]).updated
    [1]
    >>> catalog.read([1]), Catalog.load(engine).popularity.tolist()
    ([Item(id='b', type='', fields={}, popularity=5.0, created_at=0.0, embedding=None)], [0.0, 5.0])

    Without an engine it is an empty catalog that cannot take items (for features and tests).
    """

    def __init__(self, engine: sa.Engine | None = None) -> None:
        self.engine = engine
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.popularity = np.zeros(0, dtype=np.float64)
        self.created_at = np.zeros(0, dtype=np.float64)
        # Exact normalized names (title, artist, album) -> item type: the entity hint of a query.
        self.names = Names()
        # Per item, its type (a code into ``kind_names``) and the hashes of its normalized title and
        # artist (0: none): what ranking features read (10 bytes an item).
        self.kinds = np.zeros(0, dtype=np.uint16)
        self.kind_names: list[str] = []
        self._kind_codes: dict[str, int] = {}
        self.title_keys = np.zeros(0, dtype=np.int64)
        self.artist_keys = np.zeros(0, dtype=np.int64)
        # Dimension of the items' own embeddings (0: none carries one).
        self.embedding_dim = 0
        # The items an ingest under way (``applying``) changed: its indexing reads them from here.
        self._fresh: dict[int, Item] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _engine(self) -> sa.Engine:
        if self.engine is None:
            raise RuntimeError("this catalog has no SQL engine to keep items in")
        return self.engine

    # ------------------------------------------------------------------ reading
    def read(self, positions: Sequence[int], chunk: int = 5000) -> list[Item]:
        """The whole items at ``positions``, in that order, from SQL."""
        return list(self.iter_items(positions, chunk))

    def iter_items(self, positions: Sequence[int], chunk: int = 5000) -> Iterator[Item]:
        """``read``, ``chunk`` rows at a time: indexing the whole catalog holds one chunk in memory."""
        fresh = self._fresh
        strings: dict[str, str] = {}
        for start in range(0, len(positions), chunk):
            part = list(positions[start:start + chunk])
            stored = self._stored([p for p in part if p not in fresh], strings)
            for p in part:
                yield fresh[p] if p in fresh else stored[p]

    def _stored(self, positions: list[int], strings: dict[str, str]) -> dict[int, Item]:
        if not positions:
            return {}
        c = t.catalog_items.c
        lo, hi = min(positions), max(positions)
        where = c.idx.between(lo, hi) if hi - lo + 1 == len(positions) else c.idx.in_(positions)
        with self._engine().connect() as conn:
            rows = conn.execute(sa.select(c.idx, c.data, c.embedding).where(where))
            return {idx: _item(data, emb, strings) for idx, data, emb in rows}

    # ------------------------------------------------------------------ writing
    def apply(self, items: Sequence[Item], progress: Progress = no_progress, chunk: int = 5000) -> IngestChanges:
        """Adds new items and replaces changed ones, in SQL and in memory. Returns their positions.

        An item equal to the stored one is left alone, so an ingest re-indexes only what changed.
        """
        return self._apply(items, progress, chunk)[0]

    @contextmanager
    def applying(self, items: Sequence[Item], progress: Progress = no_progress) -> Iterator[IngestChanges]:
        """``apply``, then the changed items are read from memory, not SQL, until the block ends
        (where the indexes are brought up to date: the demo's first ingest took 30% longer without)."""
        changes, self._fresh = self._apply(items, progress)
        try:
            yield changes
        finally:
            self._fresh = {}

    def _apply(self, items: Sequence[Item], progress: Progress = no_progress,
               chunk: int = 5000) -> tuple[IngestChanges, dict[int, Item]]:
        engine = self._engine()
        known = sorted({self.index[i.id] for i in items if i.id in self.index})
        current: dict[str, Item] = {i.id: i for i in self.iter_items(known, chunk)}
        changed: dict[int, Item] = {}
        added: list[int] = []
        updated: list[int] = []
        unchanged = 0
        renamed = False
        new: dict[str, int] = {}
        for item in items:
            old = current.get(item.id)
            if old == item:
                unchanged += 1
                continue
            pos = self.index.get(item.id, new.get(item.id))
            if pos is None:
                pos = new[item.id] = len(self.ids) + len(new)
                added.append(pos)
            elif pos not in changed:
                updated.append(pos)
            renamed = renamed or (old is not None and _names(old.fields, old.type) != _names(item.fields, item.type))
            current[item.id] = changed[pos] = item
        if not changed:
            return IngestChanges(added, updated, unchanged), changed
        now = time.time()
        todo = sorted(changed)
        with engine.begin() as conn:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                conn.execute(t.catalog_items.delete().where(t.catalog_items.c.idx.in_(part)))
                conn.execute(t.catalog_items.insert(), [
                    {"idx": p, "item_id": changed[p].id, "data": json.dumps(changed[p].to_json()),
                     "embedding": changed[p].embedding, "updated_at": now}
                    for p in part
                ])
                progress("store items", min(start + chunk, len(todo)), len(todo))
        # Memory follows SQL only once it is committed.
        for p in added:
            self.index[changed[p].id] = p
            self.ids.append(changed[p].id)
        self.names.update(pair for p in added for pair in _names(changed[p].fields, changed[p].type))
        n = len(self.ids)
        self.popularity = np.resize(self.popularity, n)
        self.created_at = np.resize(self.created_at, n)
        self._resize_item_columns(n)
        for p, item in changed.items():
            self.popularity[p], self.created_at[p] = item.popularity, item.created_at
            self._set_item_columns(p, item.type, item.fields)
            self.embedding_dim = self.embedding_dim or item.embedding_dims
        if renamed:  # a name an item no longer has must not stay an entity hint
            names = Names()
            names.update(pair for item in self.iter_items(range(n), chunk) for pair in _names(item.fields, item.type))
            self.names = names
        return IngestChanges(added, updated, unchanged), changed

    def _resize_item_columns(self, n: int) -> None:
        grow = n - len(self.kinds)
        if grow > 0:
            self.kinds = np.concatenate([self.kinds, np.zeros(grow, dtype=np.uint16)])
            self.title_keys = np.concatenate([self.title_keys, np.zeros(grow, dtype=np.int64)])
            self.artist_keys = np.concatenate([self.artist_keys, np.zeros(grow, dtype=np.int64)])

    def _set_item_columns(self, pos: int, kind: str, fields: Mapping[str, object]) -> None:
        self.kinds[pos] = self.kind_code(kind)
        self.title_keys[pos] = name_key(fields.get("title"))
        self.artist_keys[pos] = name_key(fields.get("artist"))

    def kind_code(self, kind: str) -> int:
        """The code of an item type in ``kinds`` (a new type gets the next one)."""
        code = self._kind_codes.get(kind)
        if code is None:
            code = self._kind_codes[kind] = len(self.kind_names)
            self.kind_names.append(kind)
        return code

    @staticmethod
    def stored_count(engine: sa.Engine) -> int:
        """How many items SQL holds (without loading them)."""
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.catalog_items)).scalar_one())

    @classmethod
    def load(cls, engine: sa.Engine) -> Catalog:
        """The columns of the catalog stored in SQL.

        In two passes: the ids (which stay) first, then the JSON (parsed, then dropped). Parsed in
        one pass, the ids were strewn among the parsers' garbage, and the heap pages that kept one
        alive stayed: 58 MB for the demo's 100k items, against 21 this way.
        """
        cat = cls(engine)
        c = t.catalog_items.c
        with engine.connect() as conn:
            n, top = conn.execute(sa.select(sa.func.count(), sa.func.max(c.idx))).one()
            assert n == 0 or top == n - 1, "catalog positions must be dense"
            cat.ids = list(conn.execute(sa.select(c.item_id).order_by(c.idx)).scalars())
            cat.index = {item_id: pos for pos, item_id in enumerate(cat.ids)}
            cat.popularity = np.zeros(n, dtype=np.float64)
            cat.created_at = np.zeros(n, dtype=np.float64)
            cat._resize_item_columns(n)
            names: list[tuple[str, str]] = []
            rows = conn.execution_options(stream_results=True, yield_per=5000).execute(
                sa.select(c.idx, c.data, c.embedding).order_by(c.idx))
            for idx, data, emb in rows:
                d = json.loads(data)
                cat.popularity[idx], cat.created_at[idx] = d.get("popularity", 0.0), d.get("created_at", 0.0)
                cat._set_item_columns(idx, d.get("type", ""), d)
                names += _names(d, d.get("type", ""))
                if emb is not None and not cat.embedding_dim:
                    cat.embedding_dim = len(emb) // 4
        cat.names.update(names)
        return cat


def _item(data: str, embedding: bytes | None, strings: dict[str, str]) -> Item:
    """An item as ``apply`` stored it. ``strings`` makes equal keys and values one object."""
    d = json.loads(data)
    share = strings.setdefault
    item_id, kind = d.pop("id"), d.pop("type", "")
    popularity, created_at = d.pop("popularity", 0.0), d.pop("created_at", 0.0)
    fields = {share(k, k): share(v, v) for k, v in d.items()}
    return Item(item_id, share(kind, kind), fields, popularity, created_at, embedding)


def name_key(value: object) -> int:
    """The key of a name as ``title_keys`` and ``artist_keys`` hold it: the process's hash of the
    normalized text, 0 for none (a query matches a name when its own key is equal).

    >>> name_key("Blue  Train!") == name_key("blue train") != 0, name_key(None), name_key("")
    (True, 0, 0)
    """
    if not value or not isinstance(value, str):
        return 0
    text = normalize(value)
    return hash(text) or 1 if text else 0


def _names(fields: Mapping[str, object], kind: str) -> list[tuple[str, str]]:
    """The (normalized name, type) pairs an item with these fields gives the entity hint."""
    out = []
    for key in ("artist", "album", "title"):
        value = fields.get(key)
        if value and isinstance(value, str):
            out.append((normalize(value), "artist" if key == "artist" else (kind or key)))
    return out
