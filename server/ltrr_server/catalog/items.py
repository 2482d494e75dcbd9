"""Catalog lines: one JSON object per item, checked field by field.

>>> items, errors = parse_lines(['{"id": "a", "title": "Blue Train"}', '{"title": "x"}', '{"id": "a"}'])
>>> [i.id for i in items], [(e.line, e.field) for e in errors]
(['a'], [(2, 'id'), (3, 'id')])
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 10_000
# Text fields every strategy knows; any other string field is searchable as extra text.
TEXT_FIELDS = ("title", "artist", "album", "genre", "mood", "text")


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    type: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    popularity: float = 0.0
    created_at: float = 0.0
    # float32, packed: an item costs 4 bytes per dimension, not a Python float each.
    embedding: bytes | None = None

    @property
    def embedding_dims(self) -> int:
        return len(self.embedding) // 4 if self.embedding is not None else 0

    def vector(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        assert self.embedding is not None
        return np.frombuffer(self.embedding, dtype=np.float32)

    def text(self) -> str:
        """Every text field in one string (what an encoder reads)."""
        return " ".join(v for v in self.fields.values() if v)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "popularity": self.popularity, "created_at": self.created_at,
                **self.fields}


@dataclass(frozen=True)
class LineError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class CatalogLineError(ValueError):
    def __init__(self, error: LineError) -> None:
        super().__init__(str(error))
        self.error = error


def parse_item(data: object, line: int = 0, strings: dict[str, str] | None = None) -> Item:
    """One catalog object as an Item; raises CatalogLineError naming the field.

    ``strings``, shared by the items of one ingest, makes equal keys and values one object:
    a decoded line brings its own copy of every key, genre and artist name (about 0.7 KB an item
    of the demo catalog that the catalog would keep).
    """
    share = strings.setdefault if strings is not None else _unshared
    def fail(name: str, message: str) -> CatalogLineError:
        return CatalogLineError(LineError(line, name, message))

    if not isinstance(data, dict):
        raise fail("", "not a JSON object")
    item_id = data.get("id")
    if not isinstance(item_id, str) or not item_id.strip():
        raise fail("id", "missing or empty")
    if len(item_id) > MAX_ID_LENGTH:
        raise fail("id", f"longer than {MAX_ID_LENGTH} characters")
    fields: dict[str, str] = {}
    for key, value in data.items():
        if key in ("id", "type", "popularity", "created_at", "embedding"):
            continue
        if isinstance(value, str):
            if len(value) > MAX_TEXT_LENGTH:
                raise fail(key, f"longer than {MAX_TEXT_LENGTH} characters")
            fields[share(key, key)] = share(value, value)
        elif key in TEXT_FIELDS and value is not None:
            raise fail(key, f"must be a string, got {type(value).__name__}")
    numbers = {}
    for key in ("popularity", "created_at"):
        value = data.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise fail(key, f"must be a finite number, got {value!r}")
        if value < 0:
            raise fail(key, f"must not be negative, got {value!r}")
        numbers[key] = float(value)
    embedding = data.get("embedding")
    vec: bytes | None = None
    if embedding is not None:
        if not isinstance(embedding, list) or not embedding:
            raise fail("embedding", "must be a non-empty list of numbers")
        for k, x in enumerate(embedding):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise fail(f"embedding[{k}]", f"must be a finite number, got {x!r}")
        vec = np.asarray(embedding, dtype=np.float32).tobytes()
    kind = data.get("type", "")
    if not isinstance(kind, str):
        raise fail("type", "must be a string")
    return Item(item_id, share(kind, kind), fields, numbers["popularity"], numbers["created_at"], vec)


def _unshared(key: str, default: str) -> str:
    return default


def parse_lines(lines: Iterable[str], start: int = 1) -> tuple[list[Item], list[LineError]]:
    """Items from JSONL text; bad lines (and repeated ids) come back as errors, the rest as items."""
    items: list[Item] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    strings: dict[str, str] = {}
    for n, text in enumerate(lines, start):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(LineError(n, "", f"not valid JSON: {exc.msg}"))
            continue
        try:
            item = parse_item(data, n, strings)
        except CatalogLineError as exc:
            errors.append(exc.error)
            continue
        if item.id in seen:
            errors.append(LineError(n, "id", f"duplicate id {item.id!r} (first on line {seen[item.id]})"))
            continue
        seen[item.id] = n
        items.append(item)
    return items, errors
