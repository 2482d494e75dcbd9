"""Rows of the event log as named tuples, fields in table column order.

The writer hands them to the driver's executemany as they are: on the hot path a tuple costs
less than a dict and a column look-up per row. ``tests/server/log/test_rows.py`` checks that
every field list matches its table.
"""

from __future__ import annotations

from typing import NamedTuple


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


ROW_TYPES: dict[str, type[tuple[object, ...]]] = {
    "action_sets": ActionSetRow, "decisions": DecisionRow, "rewards": RewardRow, "joined": JoinedRow,
    "snapshots": SnapshotRow,
}
