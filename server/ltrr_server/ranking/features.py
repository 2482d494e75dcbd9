"""Candidate features: what a ranker knows about each item of the retrieved union.

Declared by group in ``[retrieval.ranking] features``; each group is a few numeric columns of
one float32 matrix (a row per candidate), which the online ranker reads as Vowpal Wabbit text
and a LambdaMART ranker as it is:

- ``strategies``: each configured strategy's score and inverse rank (0 where it did not find
  the item), how many strategies found it, its reciprocal-rank-fusion score;
- ``item``: popularity (log) and age in days (log; 0 when the catalog has no date);
- ``match``: the query is exactly the item's title, or its artist; the query names an entity of
  the item's type;
- ``memory``: the memory index's engagement rate and count for this query and item;
- ``user``: how often the user engaged with this item recently, and the share of their recent
  engagements with items of its type;
- ``context``: the request's string context features crossed with the item's type (VW only).

The query's hint namespace ``h`` (entity type, length, memory bucket, type words) goes with every
line, and the online ranker crosses it with strategies, items and matches (``-q hs -q hi -q hm``).

>>> space = FeatureSpace(["lexical", "vector"], ["strategies", "item"])
>>> space.names
['lexical_score', 'lexical_rank', 'vector_score', 'vector_rank', 'found_by', 'fused', 'popularity', 'age_days']
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ltrr_server.catalog.catalog import Catalog, name_key
from ltrr_server.features import Namespaces, escape_name, escape_value

_DAY = 86400.0
# VW namespace of each group's columns.
_NAMESPACE = {"strategies": "s", "item": "i", "match": "m", "memory": "e", "user": "u"}


@dataclass(frozen=True, slots=True)
class UserView:
    """A user's recent engagement as the features read it: item position -> times, type code -> share."""

    items: Mapping[int, int]
    kinds: Mapping[int, float]


NO_USER = UserView({}, {})


@dataclass(frozen=True, slots=True)
class MemoryView:
    """The memory index's statistics for one query: its impressions and item position -> engagements."""

    impressions: int
    engaged: Mapping[int, int]


NO_MEMORY = MemoryView(0, {})


@dataclass(slots=True)
class Candidates:
    """The union as a ranker reads it: the feature ``matrix`` (a row per candidate, columns
    ``space.names``), each candidate's item type (``kind_codes`` into ``kind_names``), and the VW
    text each candidate's line ends with, by type (``tails``)."""

    space: FeatureSpace
    matrix: np.ndarray[Any, np.dtype[np.float32]]
    kind_codes: np.ndarray[Any, np.dtype[np.uint16]]
    kind_names: Sequence[str]
    tails: dict[int, str]

    def kinds(self) -> list[str]:
        """Each candidate's item type by name."""
        names = self.kind_names
        return [names[k] if k < len(names) else "" for k in self.kind_codes.tolist()]

    def lines(self) -> list[str]:
        """Each candidate as a VW line without a label."""
        return self.space.lines(self.matrix, self.kind_codes, self.tails)


class FeatureSpace:
    """The columns of the configured groups, and the rendering of a row as a VW line."""

    def __init__(self, strategies: Sequence[str], groups: Sequence[str]) -> None:
        self.groups = tuple(groups)
        names: list[str] = []
        spaces: list[str] = []

        def add(group: str, *cols: str) -> None:
            if group in self.groups:
                names.extend(cols)
                spaces.extend(_NAMESPACE[group] * len(cols))

        self.strategies = list(strategies)
        for s in self.strategies:
            add("strategies", f"{s}_score", f"{s}_rank")
        add("strategies", "found_by", "fused")
        add("item", "popularity", "age_days")
        add("match", "title_exact", "artist_exact", "entity_type")
        add("memory", "memory_rate", "memory_count")
        add("user", "user_item", "user_kind")
        self.names = names
        self.column = {n: i for i, n in enumerate(names)}
        self._spaces = spaces
        self._tokens = [escape_name(n) + ":" for n in names]
        self._starts = [f"|{space}" for space in spaces]

    def compute(
        self, positions: Sequence[int], fused: Sequence[float], provenance: Sequence[Sequence[tuple[str, float, int]]],
        catalog: Catalog, normalized_query: str, entity_type: str, memory: MemoryView = NO_MEMORY,
        user: UserView = NO_USER, now: float | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The feature matrix of the union (``positions`` in fused order, with their fusion scores and
        provenance as the retriever made them)."""
        n, col = len(positions), self.column
        x = np.zeros((n, len(self.names)), dtype=np.float32)
        if n == 0:
            return x
        pos = np.asarray(positions, dtype=np.int64)
        if "strategies" in self.groups:
            found = np.zeros(n, dtype=np.float32)
            rows: list[int] = []
            cols: list[int] = []
            vals: list[float] = []
            for j, prov in enumerate(provenance):
                found[j] = len(prov)
                for s, score, rank in prov:
                    c = col.get(f"{s}_score")
                    if c is not None:
                        rows += (j, j)
                        cols += (c, c + 1)
                        vals += (score if math.isfinite(score) else 0.0, 1.0 / rank)
            if rows:
                x[rows, cols] = vals
            x[:, col["found_by"]] = found
            # RRF scores are about 1/60 per list: scaled to about 1 for the learner.
            x[:, col["fused"]] = np.asarray(fused, dtype=np.float32) * 60.0
        if "item" in self.groups:
            x[:, col["popularity"]] = np.log1p(catalog.popularity[pos])
            created = catalog.created_at[pos]
            days = np.maximum((time.time() if now is None else now) - created, 0.0) / _DAY
            x[:, col["age_days"]] = np.where(created > 0, np.log1p(days), 0.0)
        if "match" in self.groups:
            key = name_key(normalized_query)
            if key:
                x[:, col["title_exact"]] = catalog.title_keys[pos] == key
                x[:, col["artist_exact"]] = catalog.artist_keys[pos] == key
            if entity_type and entity_type != "none":
                code = catalog.kind_names.index(entity_type) if entity_type in catalog.kind_names else -1
                x[:, col["entity_type"]] = catalog.kinds[pos] == code
        if "memory" in self.groups and memory.engaged:
            denom = memory.impressions + 1.0
            c_rate, c_count = col["memory_rate"], col["memory_count"]
            for j, p in enumerate(positions):
                got = memory.engaged.get(p)
                if got:
                    x[j, c_rate] = got / denom
                    x[j, c_count] = math.log1p(got)
        if "user" in self.groups and (user.items or user.kinds):
            c_item, c_kind = col["user_item"], col["user_kind"]
            if user.items:
                for j, p in enumerate(positions):
                    got = user.items.get(p)
                    if got:
                        x[j, c_item] = got
            if user.kinds:
                kinds = catalog.kinds[pos]
                for code, share in user.kinds.items():
                    x[kinds == code, c_kind] = share
        return x

    def tails(self, hints: Namespaces, context: Namespaces, kind_codes: Sequence[int],
              catalog: Catalog) -> dict[int, str]:
        """Per item type code among ``kind_codes``: the VW text after the numeric namespaces (the
        item type, the query hints, and with the ``context`` group the context crossed with the type)."""
        hint_text = " ".join(f"{escape_name(f)}={escape_value(str(v))}" if isinstance(v, str)
                             else f"{escape_name(f)}:{v!r}" for ns, feats in hints if ns == "h" for f, v in feats)
        strings = [f"{escape_name(ns)}.{escape_name(f)}={escape_value(v)}"
                   for ns, feats in context for f, v in feats if isinstance(v, str)] \
            if "context" in self.groups else []
        out = {}
        for code in set(int(c) for c in kind_codes):
            kind = escape_value(catalog.kind_names[code]) if code < len(catalog.kind_names) else ""
            text = f"|t k={kind or '_'} |h {hint_text}"
            if strings:
                text += " |x " + " ".join(f"{s}^{kind or '_'}" for s in strings)
            out[code] = text
        return out

    def lines(self, matrix: np.ndarray[Any, Any], kinds: Sequence[int] | np.ndarray[Any, Any], tails: Mapping[int, str],
              prefix: Sequence[str] | None = None) -> list[str]:
        """One VW line per row (``prefix``: each row's label part, e.g. ``"1.5"``; none to predict).

        Values go out rounded to 4 decimals (their short ``repr``), only the non-zero ones, each
        namespace's once: 0.8 ms for 200 rows where formatting every cell took 1.1 ms.

        >>> space = FeatureSpace(["lexical"], ["strategies", "item"])
        >>> m = np.array([[2.5, 0.5, 1, 0.04, 0, 3.25]], dtype=np.float32)
        >>> space.lines(m, [0], {0: "|t k=song |h"}, ["1"])
        ['1 |s lexical_score:2.5 lexical_rank:0.5 found_by:1.0 fused:0.04 |i age_days:3.25 |t k=song |h']
        """
        n = len(matrix)
        if n == 0:
            return []
        values = np.round(np.asarray(matrix, dtype=np.float64), 4)
        rows, cols = np.nonzero(values)
        tokens, starts = self._tokens, self._starts
        parts: list[list[str]] = [[] if prefix is None else [prefix[j]] for j in range(n)]
        last_row, last_space = -1, ""
        spaces = self._spaces
        for r, c, v in zip(rows.tolist(), cols.tolist(), values[rows, cols].tolist(), strict=True):
            space = spaces[c]
            if r != last_row or space != last_space:
                parts[r].append(starts[c])
                last_row, last_space = r, space
            parts[r].append(f"{tokens[c]}{v!r}")
        kind_list = kinds.tolist() if isinstance(kinds, np.ndarray) else list(kinds)
        return [" ".join(p) + " " + tails[int(k)] if p else tails[int(k)] for p, k in zip(parts, kind_list,
                                                                                        strict=True)]
