"""Logged Search pages as ranking training data: each page a query group, each shown item a row.

Read from the ``pages`` table with the accepted rewards' engaged items: an item's label is its
best engagement grade on that page (0 when not engaged), its position the one it was shown at.
Pages are split by a stable hash of their event id: the evaluation share never trains any version
of any ranker, so every version is measured on pages none of them saw.
"""

from __future__ import annotations

import json
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from ltrr_server.log import schema as t

# The share of pages (by event id) that is only ever evaluated on, in percent.
HELDOUT_PERCENT = 10


def held_out(event_id: str) -> bool:
    """Whether a page belongs to the evaluation share (the same answer in every process, forever).

    >>> held_out("e1"), sum(held_out(f"e{i}") for i in range(10_000))
    (False, 985)
    """
    return zlib.crc32(event_id.encode()) % 100 < HELDOUT_PERCENT


@dataclass
class LoggedPages:
    """Rows of shown items, grouped by page (``groups``: each page's size, in order). A row is a
    float32 array (a million of them as lists of Python floats took 700 MB more)."""

    names: list[str]
    rows: list[Any] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)

    @property
    def matrix(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        width = len(self.names)
        data = b"".join(r.tobytes() if isinstance(r, array) else array("f", r).tobytes() for r in self.rows)
        return np.frombuffer(data, dtype=np.float32).reshape(len(self.rows), width).copy()

    def engaged_pages(self) -> int:
        out, start = 0, 0
        for size in self.groups:
            out += any(g > 0 for g in self.labels[start:start + size])
            start += size
        return out

    def to_npz(self) -> dict[str, Any]:
        return {"names": np.array(self.names), "matrix": self.matrix, "kinds": np.array(self.kinds),
                "labels": np.asarray(self.labels, dtype=np.float32),
                "positions": np.asarray(self.positions, dtype=np.int32),
                "groups": np.asarray(self.groups, dtype=np.int32), "event_ids": np.array(self.event_ids)}

    @classmethod
    def from_npz(cls, data: Any) -> LoggedPages:
        return cls([str(n) for n in data["names"]], [array("f", r) for r in data["matrix"].astype(np.float32)],
                   [str(k) for k in data["kinds"]],
                   data["labels"].tolist(), data["positions"].tolist(), data["groups"].tolist(),
                   [str(e) for e in data["event_ids"]])


def read_pages(
    engine: sa.Engine, policy: str, since: float = 0.0, split: str = "train",
    progress: Callable[[int], None] | None = None, limit: int = 0,
) -> LoggedPages:
    """The policy's logged pages since ``since`` (``split``: "train", "heldout" or "all") with at least
    one shown item; ``progress`` is called with the pages read so far, every 10,000."""
    p, r = t.pages.c, t.rewards.c
    query = (sa.select(p.event_id, p["items"], p.features, r.engaged, r.value)
             .select_from(t.pages.outerjoin(t.rewards, sa.and_(r.event_id == p.event_id, r.status == "accepted")))
             .where(p.policy == policy, p.created_at >= since).order_by(p.created_at, p.event_id))
    out = LoggedPages(names=[])
    columns: dict[str, int] = {}
    current: tuple[str, list[str], dict[str, Any]] | None = None
    grades: dict[str, float] = {}
    pages = 0

    def finish() -> None:
        nonlocal pages
        assert current is not None
        event_id, items, feats = current
        if not items:
            return
        pages += 1
        grown = False
        for name in feats["names"]:
            if name not in columns:
                columns[name] = len(out.names)
                out.names.append(name)
                grown = True
        if grown:  # a feature new to this page (the configuration changed): earlier rows get a 0
            width = len(out.names)
            for row in out.rows:
                row.extend([0.0] * (width - len(row)))
        index = [columns[n] for n in feats["names"]]
        same = index == list(range(len(out.names)))
        for k, (item, values) in enumerate(zip(items, feats["rows"], strict=True)):
            if same:
                row = array("f", values)
            else:
                row = array("f", bytes(4 * len(out.names)))
                for c, v in zip(index, values, strict=True):
                    row[c] = v
            out.rows.append(row)
            out.kinds.append(feats["kinds"][k] if k < len(feats["kinds"]) else "")
            out.labels.append(grades.get(item, 0.0))
            out.positions.append(k)
        out.groups.append(len(items))
        out.event_ids.append(event_id)
        if progress is not None and pages % 10_000 == 0:
            progress(pages)

    with engine.connect() as conn:
        for event_id, items, features, engaged, value in conn.execution_options(
                stream_results=True, yield_per=5000).execute(query):
            if current is None or current[0] != event_id:
                if current is not None:
                    finish()
                    if limit and pages >= limit:
                        current = None
                        break
                current, grades = None, {}
                if split == "all" or (split == "heldout") == held_out(event_id):
                    current = (event_id, json.loads(items), json.loads(features))
                else:
                    current = ("", [], {})
            if current[0] and engaged:
                grade = value if value > 0 else 1.0
                for item in json.loads(engaged):
                    grades[item] = max(grades.get(item, 0.0), grade)
        if current is not None and current[0]:
            finish()
    return out
