"""Logged decisions with their joined rewards, as an evaluation reads them from the log.

Only what every target needs is decoded up front (the actions' ids, the chosen indexes and
their probabilities); the context, the actions' features and their VW lines are decoded when a
target asks for them, so that evaluating constant or uniform targets over a million events costs
a JSON decode of three short columns each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property, lru_cache
from typing import Any

import sqlalchemy as sa

from ltrr_server.features import Namespaces, action_line, namespaces_from_json, shared_line
from ltrr_server.log import schema as t
from ltrr_server.log.store import EventLogStore


class LoggedEvent:
    """One joined decision. ``chosen[s]`` is slot s's action index, drawn with ``logged[s]``."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.seq = int(row["seq"])
        self.event_id: str = row.get("event_id", "")
        self.created_at = float(row["created_at"])
        self.reward = float(row["reward"])
        self._actions_text: str = row["actions"]
        self._context: str = row["context"]
        self.action_ids: list[str] = _action_ids(self._actions_text)
        self.chosen: list[int] = json.loads(row["chosen"])
        # Per slot, the probability of every action, as drawn.
        self.probabilities: list[list[float]] = json.loads(row["probabilities"])
        self.logged: list[float] = [self.probabilities[s][i] for s, i in enumerate(self.chosen)]

    @property
    def slots(self) -> int:
        return len(self.chosen)

    @cached_property
    def context(self) -> Namespaces:
        return namespaces_from_json(json.loads(self._context))

    @cached_property
    def shared(self) -> str:
        """The context as VW's shared line."""
        return shared_line(self.context)

    @cached_property
    def action_lines(self) -> list[str]:
        return _action_lines(self._actions_text)

    @property
    def actions_text(self) -> str:
        """The actions as logged (JSON): the same text for decisions offered the same actions."""
        return self._actions_text

    @property
    def actions(self) -> list[tuple[str, Namespaces]]:
        """Each action's id and features."""
        return actions_of(self._actions_text)

    def feature(self, namespace: str, name: str) -> str | None:
        """The value of one context feature (numbers as text), or None when the context lacks it."""
        for ns, features in self.context:
            if ns == namespace:
                for fname, value in features:
                    if fname == name:
                        return value if isinstance(value, str) else repr(value)
        return None


# Most decisions of a policy offer the same actions (its configured ones, a retrieval policy's
# plans), logged as the same text: their ids and VW lines are built once per distinct text.
@lru_cache(maxsize=1024)
def _action_ids(actions_text: str) -> list[str]:
    return [a for a, _ in json.loads(actions_text)]


@lru_cache(maxsize=1024)
def actions_of(actions_text: str) -> list[tuple[str, Namespaces]]:
    """The actions logged as ``actions_text``: each one's id and features."""
    return [(a, namespaces_from_json(f)) for a, f in json.loads(actions_text)]


@lru_cache(maxsize=1024)
def _action_lines(actions_text: str) -> list[str]:
    return [action_line(a, f) for a, f in actions_of(actions_text)]


def count_events(store: EventLogStore, policy: str, since: float, until: float) -> int:
    """How many joined events ``read_events`` would give."""
    with store.engine.connect() as conn:
        return int(conn.execute(_query(policy, since, until, sa.func.count())).scalar() or 0)


def read_events(store: EventLogStore, policy: str, since: float, until: float,
                chunk: int = 5000) -> Iterator[LoggedEvent]:
    """The policy's joined, learnable decisions made in [since, until), in join order."""
    d, j = t.decisions, t.joined
    q = _query(policy, since, until, j.c.seq, j.c.event_id, j.c.reward, d.c.created_at, d.c.context, d.c.actions,
               d.c.chosen, d.c.probabilities).order_by(j.c.seq)
    with store.engine.connect() as conn, store.engine.connect() as lookup:
        for row in conn.execution_options(yield_per=chunk).execute(q).mappings():
            yield LoggedEvent(store.resolve_actions(lookup, dict(row)))


def _query(policy: str, since: float, until: float, *columns: Any) -> sa.Select[Any]:
    d, j = t.decisions, t.joined
    return (sa.select(*columns).select_from(j).join(d, d.c.event_id == j.c.event_id)
            .where(j.c.policy == policy, d.c.learn == sa.true(), j.c.source != "norecord",
                   d.c.created_at >= since, d.c.created_at < until))
