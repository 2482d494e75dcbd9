"""Users' recent engagement: the last ``history`` items each user engaged with, for the user features.

Kept in memory for the ``max_users`` users seen last, and in SQL (``user_history``), where a
flush writes the users that changed; a restart reads them back.

>>> from ltrr_server.catalog.catalog import Catalog
>>> from ltrr_server.catalog.items import Item
>>> from ltrr_server.log import db
>>> engine = db.create_engine("sqlite://"); db.migrate(engine)
>>> catalog = Catalog(engine)
>>> _ = catalog.apply([Item("a", "song"), Item("b", "album"), Item("c", "song")])
>>> users = UserHistory(engine, catalog, history=3, max_users=10)
>>> users.add("u1", [0, 2]); users.add("u1", [0])
>>> view = users.view("u1")
>>> dict(view.items), {catalog.kind_names[k]: s for k, s in view.kinds.items()}
({0: 2, 2: 1}, {'song': 1.0})
>>> users.flush(); UserHistory(engine, catalog, history=3, max_users=10).view("u1") == view
True
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable

import sqlalchemy as sa

from ltrr_server.catalog.catalog import Catalog
from ltrr_server.log import schema as t
from ltrr_server.ranking.features import NO_USER, UserView


class UserHistory:
    def __init__(self, engine: sa.Engine, catalog: Catalog, history: int, max_users: int) -> None:
        self._engine = engine
        self._catalog = catalog
        self.history = history
        self.max_users = max_users
        self._users: OrderedDict[str, deque[int]] = OrderedDict()
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        if history > 0:
            self._load()

    def __len__(self) -> int:
        return len(self._users)

    def _load(self) -> None:
        u = t.user_history.c
        index = self._catalog.index
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(u.user_id, u["items"]).order_by(u.updated_at.desc()).limit(self.max_users))
            loaded = [(user, [index[i] for i in json.loads(items) if i in index]) for user, items in rows]
        for user, positions in reversed(loaded):
            self._users[user] = deque(positions[-self.history:], maxlen=self.history)

    def add(self, user: str, positions: Iterable[int]) -> None:
        """The user engaged with these items (catalog positions), newest last."""
        if not user or self.history <= 0:
            return
        with self._lock:
            items = self._users.get(user)
            if items is None:
                items = self._users[user] = deque(maxlen=self.history)
                if len(self._users) > self.max_users:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(user)
            items.extend(positions)
            self._dirty.add(user)

    def view(self, user: str) -> UserView:
        items = self._users.get(user) if user else None
        if not items:
            return NO_USER
        kinds = self._catalog.kinds
        counts = Counter(items)
        kind_counts = Counter(int(kinds[p]) for p in items if p < len(kinds))
        total = sum(kind_counts.values()) or 1
        return UserView(dict(counts), {k: n / total for k, n in kind_counts.items()})

    def flush(self) -> None:
        """Writes the users whose history changed since the last flush."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            ids = self._catalog.ids
            rows = [{"user_id": u, "items": json.dumps([ids[p] for p in self._users[u]]), "updated_at": time.time()}
                    for u in dirty if u in self._users]
        if not rows:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(t.user_history.delete().where(t.user_history.c.user_id.in_([r["user_id"] for r in rows])))
                conn.execute(t.user_history.insert(), rows)
        except Exception:
            with self._lock:
                self._dirty |= {str(r["user_id"]) for r in rows}  # tried again at the next flush
            raise
