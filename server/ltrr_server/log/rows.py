"""Rows of the event log as named tuples, fields in table column order.

The writer hands them to the driver's executemany as they are: on the hot path a tuple costs
less than a dict and a column look-up per row. ``tests/server/log/test_rows.py`` checks that
every field list matches its table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from ltrr_server.features import Namespaces


class DecisionRecord(NamedTuple):
    """A decision as the decision path queues it: context, probabilities and choice as they are.

    The committer turns it into its ``DecisionRow`` (``decision_row``): the JSON is written off the
    event loop, in the writer process by default, where it costs the decisions nothing.
    """

    event_id: str
    policy: str
    lineage: int
    created_at: float
    deadline: float
    context: Namespaces
    actions: str  # already JSON: made once per policy, or once per request that sends its actions
    probabilities: list[list[float]]
    chosen: list[int]
    explored: bool
    model_version: int
    learn: bool


class DecisionRow(NamedTuple):
    event_id: str
    policy: str
    lineage: int
    created_at: float
    deadline: float
    context: str
    actions: str
    probabilities: str
    chosen: str
    explored: bool
    model_version: int
    learn: bool


class RewardRow(NamedTuple):
    event_id: str
    reward_id: str
    value: float
    engaged: str | None
    oracle_best: float | None
    oracle_chosen: float | None
    status: str
    received_at: float


class JoinedRow(NamedTuple):
    seq: int
    event_id: str
    policy: str
    reward: float
    n_rewards: int
    source: str
    oracle_best: float | None
    oracle_chosen: float | None
    joined_at: float


class SnapshotRow(NamedTuple):
    policy: str
    lineage: int
    model_version: int
    last_joined_seq: int
    trigger: str
    created_at: float
    size_bytes: int
    model: bytes


class ActionSetRow(NamedTuple):
    key: str
    actions: str
    created_at: float


class PageRow(NamedTuple):
    event_id: str
    policy: str
    created_at: float
    ranker: str
    ranker_version: int
    probability: float
    swapped: int | None
    user_id: str
    items: str
    features: str
    learn: bool


def float_lists(rows: Sequence[Sequence[float]]) -> str:
    """JSON for lists of floats (orjson: 0.8 us for ten, where ``repr`` joined took 12.5).

    >>> float_lists([[0.25, 0.75], [1.0]])
    '[[0.25,0.75],[1.0]]'
    """
    return orjson.dumps(rows).decode()


def decision_row(record: Sequence[Any]) -> DecisionRow:
    """The log row of a ``DecisionRecord`` (or of the plain tuple it is sent to the writer process as).

    >>> rec = DecisionRecord("e1", "p", 1, 10.0, 40.0, [("user", [("segment", "s1"), ("age", 31.0)])],
    ...                      '[["a",[]]]', [[0.25, 0.75]], [1], True, 3, True)
    >>> row = decision_row(tuple(rec))
    >>> row.context, row.probabilities, row.chosen
    ('[["user",[["segment","s1"],["age",31.0]]]]', '[[0.25,0.75]]', '[1]')
    """
    (event_id, policy, lineage, created_at, deadline, context, actions, probabilities, chosen, explored,
     model_version, learn) = record
    # orjson: the context's JSON in 0.6 us, where the standard encoder took 9.7 (the writer
    # process writes one per decision). Non-ASCII text is written as UTF-8, not escaped.
    return DecisionRow(event_id, policy, lineage, created_at, deadline, orjson.dumps(context).decode(), actions,
                       float_lists(probabilities), repr(chosen), explored, model_version, learn)


ROW_TYPES: dict[str, type[tuple[object, ...]]] = {
    "action_sets": ActionSetRow, "decisions": DecisionRow, "rewards": RewardRow, "joined": JoinedRow,
    "snapshots": SnapshotRow, "pages": PageRow,
}
